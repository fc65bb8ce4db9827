"""Run folders and checkpoints: what ``mlsec train`` and ``mlsec defend train`` runs share.

A run folder holds ``checkpoint.safetensors`` (written through a temporary file and a rename) and
``log.jsonl``. A checkpoint's metadata (under :data:`~mlsec.defenses.weights.META_KEY`) names its
format, by the command that writes it, and the settings and data that decide the run; resuming
from a checkpoint of the other command, of other settings or data, or from a damaged one is an
:class:`~mlsec.errors.InputError` with subject ``"resume"`` that says which.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from mlsec.defenses.weights import META_KEY, dtype_name, mismatch, one_line, read_safetensors
from mlsec.errors import InputError

__all__ = [
    "BEST",
    "CHECKPOINT",
    "GAN_FORMAT",
    "LOG",
    "RUN_FILES",
    "TRAIN_FORMAT",
    "check_folder",
    "check_same_run",
    "count_problem",
    "damaged",
    "optimizer_problem",
    "optimizer_state",
    "read_checkpoint",
    "rng_problem",
]

CHECKPOINT = "checkpoint.safetensors"
BEST = "best.safetensors"
LOG = "log.jsonl"
RUN_FILES = (CHECKPOINT, LOG, BEST)

# The checkpoint formats, by the command that writes each: a checkpoint handed to the other
# command is refused by name.
TRAIN_FORMAT = "mlsec-train-checkpoint/2"
GAN_FORMAT = "mlsec-gan-checkpoint/1"
_WRITERS = {TRAIN_FORMAT: "mlsec train", GAN_FORMAT: "mlsec defend train"}
_RETIRED = {"mlsec-train-checkpoint/1"}  # older mlsec train, which recorded no data fingerprint
_NEW_RUN = "start a new run in another folder"


def check_folder(folder: Path, *, resume: bool, files: tuple[str, ...] = RUN_FILES) -> None:
    """Raise :class:`InputError` unless ``folder`` can hold a new run, or a run to resume.

    Args:
        folder: the run's folder.
        resume: whether the run continues from the folder's checkpoint.
        files: the names of the files the run writes there, none of which may be a folder.

    """
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder} exists and is not a folder")
    for name in files:
        if (folder / name).is_dir():
            raise InputError(
                f"{folder / name} is a folder where the run keeps its {name} file; remove it or "
                "choose another folder"
            )
    checkpoint = folder / CHECKPOINT
    if resume and not checkpoint.exists():
        raise InputError(f"{folder} holds no {CHECKPOINT} to resume from", subject="resume")
    if not resume and checkpoint.exists():
        raise InputError(
            f"{folder} holds the checkpoint of an earlier run; resume it or choose another folder"
        )


def damaged(path: Path, what: str) -> InputError:
    """The error for a checkpoint that does not hold what mlsec wrote: ``what`` says where."""
    return InputError(f"{path} is damaged ({what}); {_NEW_RUN}", subject="resume")


def read_checkpoint(path: Path, expected: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and the ``mlsec`` metadata of a run checkpoint in format ``expected``.

    Raises:
        InputError: one line naming ``path`` for an unreadable file, one without mlsec's metadata
            or with metadata that is not a JSON object, and a checkpoint of another command or an
            older format.

    """
    tensors, metadata = read_safetensors(path, "cannot read", _NEW_RUN, subject="resume")
    raw = metadata.get(META_KEY)
    if raw is None:
        raise InputError(
            f"{path} holds no mlsec metadata (another program or an older mlsec wrote it); "
            + _NEW_RUN,
            subject="resume",
        )
    try:
        meta = json.loads(raw)
    except ValueError:
        meta = None
    if not isinstance(meta, dict):
        raise damaged(path, "its mlsec metadata is not a JSON object")
    found = meta.get("format")
    if found != expected:
        if isinstance(found, str) and found in _RETIRED:
            raise InputError(
                f"{path} was written by an older mlsec, which did not record the data it was made "
                f"with; {_NEW_RUN}",
                subject="resume",
            )
        if not isinstance(found, str) or found not in _WRITERS:
            raise damaged(path, f"unknown checkpoint format {found!r}")
        raise InputError(
            f"{path} was written by {_WRITERS[found]}, not by {_WRITERS[expected]}; {_NEW_RUN}",
            subject="resume",
        )
    return tensors, meta


_ABSENT = object()


def _show(value: object) -> str:
    if value is _ABSENT:
        return "missing"
    return "none" if value is None else json.dumps(value)


def _setting_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    differences = []
    for key, value in current.items():
        old = saved.get(key, _ABSENT)
        if isinstance(value, Mapping) and isinstance(old, Mapping):
            differences += [f"{key}.{d}" for d in _setting_differences(old, value)]
        elif old != value:
            differences.append(f"{key}: {_show(old)} in the checkpoint, {_show(value)} now")
    return differences


def check_same_run(path: Path, saved: object, current: Mapping[str, Any]) -> None:
    """Raise :class:`InputError` unless a checkpoint's settings equal the run's.

    Args:
        path: the checkpoint, for the message.
        saved: the settings the checkpoint recorded (JSON).
        current: the run's settings (JSON values); its ``"data"`` maps names of the data (e.g.
            ``"training data"``) to their hashes
            (:func:`mlsec.core.fingerprint.fingerprint_tensors`), reported as ``NAME differs``.

    """
    if not isinstance(saved, Mapping):
        raise damaged(path, "its settings are not a JSON object")
    ours = {k: v for k, v in current.items() if k != "data"}
    settings = _setting_differences(saved, ours)
    saved_data = saved.get("data")
    saved_data = saved_data if isinstance(saved_data, Mapping) else {}
    data = [
        f"{name} differs"
        for name, h in current.get("data", {}).items()
        if saved_data.get(name) != h
    ]
    if settings or data:
        made = "other settings" if settings else "other data"
        raise InputError(
            f"the checkpoint in {path.parent} was made with {made} "
            f"({'; '.join(settings + data)}); resume with the same settings and data, or "
            + _NEW_RUN,
            subject="resume",
        )


def optimizer_problem(
    optimizer: torch.optim.Optimizer, state: Mapping[int, Mapping[str, Any]], prefix: str
) -> str | None:
    """Why ``state`` (per-parameter optimiser state by index) does not fit, or None if it does.

    What a parameter's state holds is learnt from a probe: the same optimiser, one step on a
    two-element parameter (a per-parameter buffer then has shape ``[2]``, a counter shape ``[]``).
    """
    params = [p for group in optimizer.param_groups for p in group["params"]]
    probe_param = torch.zeros(2, requires_grad=True)
    probe = type(optimizer)([probe_param], **optimizer.defaults)
    probe_param.grad = torch.ones(2)
    probe.step()
    reference = probe.state[probe_param]
    for index, entries in sorted(state.items()):
        if not 0 <= index < len(params):
            return f"optimiser state {prefix}.{index} for a parameter the model does not have"
        if set(entries) != set(reference):
            return (
                f"optimiser state {prefix}.{index} holds {', '.join(sorted(entries)) or 'nothing'}"
                f", not {', '.join(sorted(reference))}"
            )
        for name, value in entries.items():
            ref, where = reference[name], f"{prefix}.{index}.{name}"
            if not isinstance(ref, torch.Tensor):
                if type(value) is not type(ref):
                    return f"{where} is {type(value).__name__}, not {type(ref).__name__}"
                continue
            if not isinstance(value, torch.Tensor):
                return f"{where} is not a tensor"
            problem = mismatch(where, value, params[index] if ref.dim() else ref)
            if problem is not None:
                return problem
    return None


def optimizer_state(
    tensors: Mapping[str, torch.Tensor], prefix: str
) -> tuple[dict[int, dict[str, Any]], list[str]]:
    """Per-parameter optimiser state from ``PREFIX.INDEX.NAME`` tensors, and the malformed names."""
    state: dict[int, dict[str, Any]] = {}
    malformed = []
    for key, value in tensors.items():
        if key.startswith(prefix + "."):
            parts = key.split(".", 2)
            if len(parts) != 3 or not parts[1].isdecimal() or not parts[2]:
                malformed.append(key)
                continue
            state.setdefault(int(parts[1]), {})[parts[2]] = value
    return state, malformed


def rng_problem(name: str, value: torch.Tensor | None, device: str = "cpu") -> str | None:
    """Why ``value`` is not a generator state for ``device``, or None if it is one."""
    if value is None:
        return f"missing tensor {name}"
    scratch = torch.Generator(device=device)
    if value.dtype != torch.uint8 or value.shape != scratch.get_state().shape:
        return f"{name} is {dtype_name(value)} of shape {list(value.shape)}, not a generator state"
    try:
        scratch.set_state(value)
    except RuntimeError as error:
        return f"{name}: {one_line(error)}"
    return None


def count_problem(name: str, value: torch.Tensor | None, *, integer: bool) -> str | None:
    """Why ``value`` is not one non-negative finite number (an integer if ``integer``), or None."""
    if value is None:
        return f"missing tensor {name}"
    kind = "an integer" if integer else "a floating-point number"
    is_integer = not (value.is_floating_point() or value.is_complex() or value.dtype == torch.bool)
    right_type = is_integer if integer else value.is_floating_point()
    if value.numel() != 1 or not right_type:
        return f"{name} is {dtype_name(value)} of shape {list(value.shape)}, not {kind}"
    number = value.item()
    if not math.isfinite(number) or number < 0:
        return f"{name} is {number}, not {kind} >= 0"
    return None
