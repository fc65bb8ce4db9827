"""``torch.export`` programs (``.pt2``) as ordinary modules, loaded after the archive is inspected.

Without ``trust_pickle`` an archive loads only when
:func:`mlsec.io.export_checks.check_export_archive` finds nothing in it that could unpickle or run
code, and the loaded graph calls only ATen and prims operators
(:func:`mlsec.io.export_checks.check_export_graph`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from mlsec.core.text import error_line
from mlsec.errors import InputError
from mlsec.io.archives import export_layout
from mlsec.io.export_checks import check_export_archive, check_export_graph
from mlsec.io.messages import LIBRARY_TERMS, PICKLE_WARNING, Terms, shown
from mlsec.io.modules import cwd_importable

__all__ = ["ExportedModel", "load_exported"]


class ExportedModel(nn.Module):
    """A ``torch.export`` program as an ordinary module.

    The program's module refuses ``train()`` and ``eval()``; here they only set the flag (the
    graph keeps the mode it was exported in). A program exported for a fixed batch size runs
    larger and smaller batches in chunks of that size, the last chunk padded with zeros.

    Args:
        program: the module of the exported program (``ExportedProgram.module()``).
        batch: the batch size the program was exported for, or None for a dynamic one.

    """

    def __init__(self, program: nn.Module, batch: int | None) -> None:
        super().__init__()
        self.program = program
        self.batch = batch

    def train(self, mode: bool = True) -> ExportedModel:
        """Set the training flags without touching the exported graph, which cannot switch."""
        for module in self.modules():
            module.training = mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the program on ``x``, in chunks of its batch size if it has a fixed one."""
        batch = self.batch
        if batch is None or x.shape[0] == batch:
            out: torch.Tensor = self.program(x)
            return out
        chunks = []
        for start in range(0, max(x.shape[0], 1), batch):
            part = x[start : start + batch]
            count = part.shape[0]
            if count < batch:
                part = torch.cat([part, part.new_zeros((batch - count, *part.shape[1:]))])
            chunks.append(self.program(part)[:count])
        return torch.cat(chunks)


@contextmanager
def _quiet(*logger_names: str) -> Iterator[None]:
    """Silence loggers for a moment: torch.export logs whole tracebacks for a bad archive."""
    loggers = [logging.getLogger(name) for name in logger_names]
    disabled = [logger.disabled for logger in loggers]
    for logger in loggers:
        logger.disabled = True
    try:
        yield
    finally:
        for logger, flag in zip(loggers, disabled, strict=True):
            logger.disabled = flag


def _check_before_loading(path: Path, trust_pickle: bool, subject: str, terms: Terms) -> None:
    """Refuse an archive that could run code, unless the caller trusts it."""
    if trust_pickle:
        return
    if export_layout(path) == "legacy":
        raise InputError(
            f"{shown(path)} is a torch.export archive in the layout of PyTorch < 2.7, whose "
            "entries are pickles; re-save it with torch.export.save from a newer PyTorch, or "
            f"pass {terms.trust_pickle} only if you trust its source",
            subject=subject,
        )
    check_export_archive(path, subject, terms)


def _fixed_batch(program: torch.export.ExportedProgram, name: str) -> int | None:
    """The batch size the program's one input was exported for, or None if it is dynamic."""
    batch = None
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name == name:
            shape = getattr(node.meta.get("val"), "shape", None)
            if shape and isinstance(shape[0], int):
                batch = shape[0]
    return batch


def load_exported(
    path: Path, *, trust_pickle: bool, subject: str = "model", terms: Terms = LIBRARY_TERMS
) -> tuple[ExportedModel, list[str]]:
    """Load the ``torch.export`` archive ``path`` as a module; returns it and notes for the user.

    Args:
        path: a ``.pt2`` archive written by ``torch.export.save``.
        trust_pickle: skip the inspection and let PyTorch unpickle what the archive asks for.
        subject: the input's name in the caller's terms, the subject of every error.
        terms: how messages name the caller's other inputs.

    Raises:
        InputError: the archive is refused, unreadable or not a one-input program.

    """
    where = shown(path)
    _check_before_loading(path, trust_pickle, subject, terms)
    notes = [PICKLE_WARNING] if trust_pickle else []
    try:
        with _quiet("torch.export", "torch._export"), cwd_importable(trust_pickle):
            program = torch.export.load(path)
            module = program.module()
    except Exception as error:  # the deserializer fails on a malformed archive in many ways
        raise InputError(
            f"cannot read {where} as a torch.export program: {error_line(error)}", subject=subject
        ) from None
    if not trust_pickle:
        check_export_graph(module, where, subject, terms)
    user_inputs = list(program.graph_signature.user_inputs)
    if len(user_inputs) != 1:
        raise InputError(
            f"the program in {where} takes {len(user_inputs)} inputs; "
            "mlsec gives it one batch of images",
            subject=subject,
        )
    batch = _fixed_batch(program, user_inputs[0])
    notes.append(
        f"read {where} as a torch.export program; it runs in the mode (eval or train) "
        "it was exported in"
    )
    if batch is not None:
        notes.append(
            f"{where} was exported for batches of exactly {batch}: mlsec runs it {batch} "
            "samples at a time; export with a dynamic batch dimension to run faster"
        )
    return ExportedModel(module, batch), notes
