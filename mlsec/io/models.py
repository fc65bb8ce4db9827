"""Loading the model a user names: a file in one of PyTorch's formats, an entry point or a name.

Nothing here unpickles arbitrary objects unless the caller says so: weights come from safetensors
or ``torch.load(weights_only=True)``, whole programs from TorchScript or ``torch.export`` archives
(checked beforehand for pickled entries and native code). A pickled whole model loads only with
``trust_pickle=True`` (``--trust-pickle``), and the notes then say that code from the file ran.

Every failure is a one-line :class:`InputError` naming the file; its subject is the caller's name
for the input (``"model"``, or ``"arch"`` for the network a weights file is loaded into).
"""

from __future__ import annotations

import pickle
import re
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from mlsec import zoo
from mlsec.core.text import error_line
from mlsec.errors import InputError
from mlsec.io.archives import (
    archive_names,
    check_torch_zip,
    check_torchscript_archive,
    export_layout,
)
from mlsec.io.exported import load_exported
from mlsec.io.messages import LIBRARY_TERMS, PICKLE_WARNING, Terms, few, shown
from mlsec.io.modules import cwd_importable, looks_like_path, module_from

__all__ = ["MODEL_SUFFIXES", "load_model"]

MODEL_SUFFIXES = frozenset(
    {".pt", ".pth", ".pt2", ".bin", ".ckpt", ".safetensors", ".jit", ".ts", ".torchscript"}
)
_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")
# How torch.load(weights_only=True) names a global it refuses to import.
_UNSAFE_GLOBAL = re.compile(r"[Uu]nsupported (?:global: )?GLOBAL ([\w.]+)")
_ARCH = "arch"  # the subject of errors in the network that ``arch`` builds


@dataclass
class _Request:
    """One model file to load, what the caller allows, and how messages name things."""

    path: Path
    arch: str | None
    trust_pickle: bool
    subject: str
    terms: Terms
    notes: list[str] = field(default_factory=list)

    @property
    def where(self) -> str:
        return shown(self.path)

    def error(self, message: str) -> InputError:
        return InputError(message, subject=self.subject)


def load_model(
    spec: str,
    *,
    arch: str | None = None,
    trust_pickle: bool = False,
    subject: str = "model",
    terms: Terms = LIBRARY_TERMS,
) -> tuple[nn.Module, str, list[str]]:
    """Load the model a user named, in eval mode on the CPU.

    Args:
        spec: a file (safetensors or ``torch.save`` weights with ``arch``, TorchScript,
            ``torch.export`` ``.pt2``, or a pickled whole model with ``trust_pickle``),
            ``module:function`` returning an ``nn.Module``, or a bundled model name.
        arch: ``module:factory`` returning the network that a weights file is loaded into.
        trust_pickle: allow ``torch.load(weights_only=False)`` for a file that needs it; this runs
            code from the file.
        subject: the input's name in the caller's terms, the subject of every error.
        terms: how messages name the caller's other inputs (the command line passes its flags).

    Returns:
        ``(model, name, notes)``: the model in eval mode, a name for reports (the file name for a
        file) and notes for the user, such as :data:`~mlsec.io.messages.PICKLE_WARNING`.

    Raises:
        InputError: the model cannot be loaded, or only by running code the caller did not allow.

    Example:
        >>> model, name, notes = load_model("mnist-cnn")
        >>> name, model.training, notes
        ('mnist-cnn', False, [])

    """
    path = Path(spec)
    if path.is_dir():
        raise InputError(
            f"{shown(spec)} is a folder; give a model file "
            "(.safetensors, .pt, .pt2), module:function or a bundled model name",
            subject=subject,
        )
    if path.is_file():
        request = _Request(path, arch, trust_pickle, subject, terms)
        model, arch_used = _load_model_file(request)
        name, notes = path.name, request.notes
    elif path.exists():
        raise InputError(f"{shown(spec)} is not a regular file", subject=subject)
    elif ":" in spec:
        # The user's own module keeps the mode it was returned in: the audit evaluates in eval
        # mode and warns (a sanity check) if it came in train mode.
        return module_from(spec, subject), spec, []
    elif looks_like_path(spec, MODEL_SUFFIXES):
        raise InputError(f"no such file: {shown(spec)}", subject=subject)
    else:
        model, arch_used, name, notes = _load_bundled(spec, subject, terms), False, spec, []
    if arch is not None and not arch_used:
        notes.append(
            f"{terms.arch} {arch} was not used: {shown(name)} is a whole model, not weights"
        )
    return model.eval(), name, notes


def _load_bundled(name: str, subject: str, terms: Terms) -> nn.Module:
    if name in zoo.list_defenses():
        raise InputError(
            f"{name!r} is a bundled defense, not a model; audit a model behind it "
            f"with {terms.defense} {name}",
            subject=subject,
        )
    try:
        return zoo.load(name)
    except InputError as error:
        raise InputError(
            f"{error.detail}, or give a model file (.safetensors, .pt, .pt2) or module:function",
            subject=subject,
        ) from None


def _load_model_file(request: _Request) -> tuple[nn.Module, bool]:
    """Load a model file by its content; returns the model and whether ``arch`` built it."""
    path, where = request.path, request.where
    size = path.stat().st_size
    if size == 0:
        raise request.error(f"{where} is empty")
    with path.open("rb") as fh:
        head = fh.read(16)
    # By content, not by name: a TorchScript file may well be called model.pt2.
    if _looks_like_safetensors(head, size):
        return _load_safetensors(request), True
    if zipfile.is_zipfile(path):
        return _load_zip(request)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return _load_safetensors(request), True
    if head.startswith(b"PK\x03\x04"):
        kind = "a torch.export program" if suffix == ".pt2" else "a PyTorch file"
        raise request.error(
            f"cannot read {where} as {kind}: it starts like a zip archive "
            "but is truncated or corrupt"
        )
    if suffix == ".pt2":
        raise request.error(f"cannot read {where} as a torch.export program: not a zip archive")
    # Not a zip: perhaps the legacy torch.save format, which weights_only=True also reads.
    return _load_torch_file(request)


def _load_zip(request: _Request) -> tuple[nn.Module, bool]:
    """A zip archive: a torch.export program, a TorchScript program or a ``torch.save`` file."""
    path, trusted = request.path, request.trust_pickle
    names = archive_names(path, request.subject)
    if export_layout(path) is not None:
        model, notes = load_exported(
            path, trust_pickle=trusted, subject=request.subject, terms=request.terms
        )
        request.notes.extend(notes)
        return model, False
    if "constants.pkl" in names and any(name.startswith("code/") for name in names):
        if not trusted:
            check_torchscript_archive(path, request.subject, request.terms)
        return _load_torchscript(request), False
    if not trusted:
        check_torch_zip(path, request.subject, request.terms)
    return _load_torch_file(request)


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    """A safetensors file starts with the JSON header's length (u64, little-endian), then ``{``."""
    if len(head) < 9:
        return False
    (header_length,) = struct.unpack("<Q", head[:8])
    return head[8:9] == b"{" and 0 < header_length <= size - 8


def _load_safetensors(request: _Request) -> nn.Module:
    where, arch = request.where, request.arch
    if arch is None:
        raise request.error(
            f"{where} holds weights only; give {request.terms.arch} module:factory "
            "returning the network to load them into"
        )
    try:
        state = load_file(str(request.path), device="cpu")
    except (SafetensorError, OSError, ValueError) as error:
        raise request.error(f"cannot read {where} as safetensors: {error_line(error)}") from None
    model = module_from(arch, _ARCH)
    _load_weights(model, state, request)
    request.notes.append(
        f"loaded {len(state)} tensors from {where} into {request.terms.arch} {arch}"
    )
    return model


def _load_torchscript(request: _Request) -> nn.Module:
    try:
        # TorchScript archives hold TorchScript code and tensors, read by a restricted unpickler.
        model = torch.jit.load(str(request.path), map_location="cpu")
    except Exception as error:  # the TorchScript reader fails on damaged bytes in many ways
        raise request.error(
            f"cannot read {request.where} as TorchScript: {error_line(error)}"
        ) from None
    request.notes.append(f"read {request.where} as a TorchScript program")
    return model


def _weights_only_reason(error: BaseException) -> str:
    """What ``torch.load(weights_only=True)`` objected to, without its advice to unpickle."""
    _, marker, rest = str(error).partition("WeightsUnpickler error:")
    lines = [line for line in rest.splitlines() if line.strip()] if marker else []
    return error_line(ValueError(lines[0])) if lines else error_line(error)


def _read_torch_file(request: _Request) -> Any:
    """``torch.load`` the file: restricted, or unrestricted if it needs it and is trusted."""
    where, trust = request.where, request.terms.trust_pickle
    try:
        return torch.load(request.path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # Only a file that weights_only refused, not a broken one, may need trust_pickle.
        refused = "Weights only load failed" in str(error)
        needs = _UNSAFE_GLOBAL.search(str(error))
        if not refused or (needs is None and not request.trust_pickle):
            raise request.error(
                f"cannot read {where} as a PyTorch file: {_weights_only_reason(error)}"
            ) from None
        if needs is not None and not request.trust_pickle:
            raise request.error(
                f"{where} is a pickled Python object (it needs {needs.group(1)}) and loading it "
                f"would run code from the file; pass {trust} only if you trust its source, or "
                "save a state dict, safetensors, TorchScript or torch.export file"
            ) from None
    except EOFError:
        raise request.error(
            f"cannot read {where} as a PyTorch file: it ends early (truncated?)"
        ) from None
    except Exception as error:  # the restricted unpickler fails on damaged bytes in many ways
        raise request.error(f"cannot read {where} as a PyTorch file: {error_line(error)}") from None
    try:  # the pickle may name classes from the user's own modules in the current folder
        with cwd_importable():
            loaded = torch.load(request.path, map_location="cpu", weights_only=False)
    except (Exception, SystemExit) as error:  # the file's own code runs here
        raise request.error(
            f"cannot read {where} with {trust} ({type(error).__name__}: {error_line(error)})"
        ) from None
    request.notes.append(PICKLE_WARNING)
    return loaded


def _load_torch_file(request: _Request) -> tuple[nn.Module, bool]:
    """A ``torch.save`` file: a state dict (with ``arch``), or a pickled model if trusted."""
    loaded = _read_torch_file(request)
    if isinstance(loaded, nn.Module):
        return loaded, False
    state = _state_dict_from(loaded, request)
    where, arch, arch_term = request.where, request.arch, request.terms.arch
    if arch is None:
        raise request.error(
            f"{where} holds weights only (a state dict of {len(state)} tensors); "
            f"give {arch_term} module:factory returning the network to load them into"
        )
    model = module_from(arch, _ARCH)
    _load_weights(model, state, request)
    request.notes.append(
        f"loaded a state dict of {len(state)} tensors from {where} into {arch_term} {arch}"
    )
    return model, True


def _state_dict_from(loaded: Any, request: _Request) -> dict[str, torch.Tensor]:
    """The state dict in what ``torch.load`` returned: itself, or a checkpoint's entry."""
    if not isinstance(loaded, dict):
        raise request.error(
            f"{request.where} holds a {type(loaded).__name__}, not a model or a state dict"
        )
    if loaded and all(isinstance(v, torch.Tensor) for v in loaded.values()):
        return dict(loaded)
    for key in _STATE_DICT_KEYS:
        inner = loaded.get(key)
        if isinstance(inner, dict) and all(isinstance(v, torch.Tensor) for v in inner.values()):
            request.notes.append(f"used the {key!r} entry of the checkpoint {request.where}")
            return dict(inner)
    raise request.error(
        f"{request.where} holds a dict ({few(str(k) for k in loaded)}) that is not a state "
        "dict; expected tensors by name or a 'state_dict' entry"
    )


def _load_weights(model: nn.Module, state: dict[str, torch.Tensor], request: _Request) -> None:
    """``model.load_state_dict(state, strict=True)``, with mismatches told in one line."""
    expected = model.state_dict()
    prefix = "module."
    if (
        state
        and all(key.startswith(prefix) for key in state)
        and not any(key.startswith(prefix) for key in expected)
    ):
        state = {key[len(prefix) :]: value for key, value in state.items()}
        request.notes.append(
            f"removed the {prefix!r} prefix of the keys (a DataParallel checkpoint)"
        )
    where = f"the weights in {request.where} do not fit {request.terms.arch} {request.arch}"
    missing, unexpected = set(expected) - set(state), set(state) - set(expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing ({few(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected ({few(unexpected)})")
        raise request.error(f"{where}: keys {'; '.join(parts)}")
    wrong = [k for k in sorted(state) if tuple(state[k].shape) != tuple(expected[k].shape)]
    if wrong:
        key = wrong[0]
        more = f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""
        raise request.error(
            f"{where}: {shown(key)} has shape {tuple(state[key].shape)} in the file "
            f"but {tuple(expected[key].shape)} in the network{more}"
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise request.error(f"{where}: {error_line(error)}") from None
