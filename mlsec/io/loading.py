"""Turning what a user names on the command line into a model and data tensors.

Nothing here unpickles arbitrary objects unless the user says so: weights come from safetensors or
``torch.load(weights_only=True)``, whole programs from TorchScript or ``torch.export`` archives
(checked beforehand for pickled entries and native code), data from ``.npz`` files read with
``allow_pickle=False`` or from image files. A pickled whole model loads only with
``trust_pickle=True`` (``--trust-pickle``), and the notes then say that code from the file ran.

Every failure is an :class:`InputError` with a one-line message naming the option and the file.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import logging
import math
import os
import pickle
import re
import struct
import sys
import zipfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import nn

from mlsec import datasets, zoo
from mlsec.core.data import as_tensors
from mlsec.core.model import check_materialized
from mlsec.core.normalize import Normalized
from mlsec.core.text import error_line, raised_by
from mlsec.errors import InputError
from mlsec.io.archives import (
    check_export_archive,
    check_export_graph,
    check_torch_zip,
    check_torchscript_archive,
    export_layout,
)

__all__ = [
    "CLASS_MAP_NOTE",
    "PICKLE_WARNING",
    "apply_normalize",
    "as_tensors",
    "image_folder_classes",
    "load_data",
    "load_entry_point",
    "load_model",
    "parse_normalize",
]

BUNDLED_DATA = {"mnist-sample": datasets.mnist_sample}

PICKLE_WARNING = "loaded a pickled model with --trust-pickle: this executed code from the file"

MODEL_SUFFIXES = frozenset(
    {".pt", ".pth", ".pt2", ".bin", ".ckpt", ".safetensors", ".jit", ".ts", ".torchscript"}
)
DATA_SUFFIXES = frozenset({".npz", ".npy"})
IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".pbm", ".tif", ".tiff", ".webp"}
)
# Pillow identifies a file by its content, not its name; limit it to plain raster formats, so a
# file named .png that is really PostScript never reaches Ghostscript.
_PIL_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "PPM", "TIFF", "WEBP")
_PIL_GRAY = frozenset({"L", "1"})
_PIL_UNSUPPORTED = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")
# How torch.load(weights_only=True) names a global it refuses to import.
_UNSAFE_GLOBAL = re.compile(r"[Uu]nsupported (?:global: )?GLOBAL ([\w.]+)")


# --- messages ------------------------------------------------------------------------------------


def _quote(text: object) -> str:
    """``text`` as is when printable, else its repr: a file name cannot break the one-line rule."""
    shown = str(text)
    return shown if shown.isprintable() else repr(shown)


def _weights_only_reason(error: BaseException) -> str:
    """What ``torch.load(weights_only=True)`` objected to, without its advice to unpickle."""
    _, marker, rest = str(error).partition("WeightsUnpickler error:")
    lines = [line for line in rest.splitlines() if line.strip()] if marker else []
    return error_line(ValueError(lines[0])) if lines else error_line(error)


def _few(names: Iterable[str], limit: int = 3) -> str:
    items = sorted(names)
    shown = ", ".join(_quote(name) for name in items[:limit])
    return shown + (", ..." if len(items) > limit else "")


def _looks_like_path(spec: str, suffixes: frozenset[str]) -> bool:
    return "/" in spec or os.sep in spec or Path(spec).suffix.lower() in suffixes


@contextmanager
def _cwd_importable(enabled: bool = True) -> Iterator[None]:
    """Let the current folder's modules import, behind every installed package, for a moment.

    The folder goes to the end of ``sys.path`` (so a folder named like a dependency never shadows
    it) and comes off again afterwards (so nothing the run imports later can come from it).
    """
    cwd = str(Path.cwd())
    added = enabled and cwd not in sys.path
    if added:
        sys.path.append(cwd)
    try:
        yield
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


def _installed_spec(name: str) -> ModuleSpec | None:
    """Where ``import name`` finds a module without the current folder, or None."""
    cwd = str(Path.cwd())
    saved = sys.path[:]
    sys.path[:] = [p for p in saved if p not in ("", ".", cwd)]
    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    finally:
        sys.path[:] = saved


def _import_user_module(module_name: str, option: str) -> ModuleType:
    """Import ``module_name``: an installed module, else one in the current folder.

    A name found both installed and in the current folder is ambiguous and refused, rather than
    letting a file in the working folder stand in for an installed package.
    """
    top = module_name.partition(".")[0]
    local = None
    if top not in sys.modules:
        local = importlib.machinery.PathFinder.find_spec(top, [str(Path.cwd())])
        installed = _installed_spec(top)
        if local is not None and installed is not None and local.origin != installed.origin:
            raise InputError(
                f"{option}: module {top!r} is both in the current folder ({_quote(local.origin)}) "
                f"and installed ({_quote(installed.origin)}); rename your file or run mlsec from "
                "another folder"
            )
    with _cwd_importable(local is not None):
        return importlib.import_module(module_name)


# --- entry points --------------------------------------------------------------------------------


def load_entry_point(spec: str, option: str) -> Any:
    """Import ``module:attribute`` and return the attribute, called if it is a function.

    The module is an installed one or one in the current folder; the current folder never shadows
    an installed package (see :func:`_import_user_module`). Failures, a ``sys.exit`` in the user's
    code included, raise :class:`InputError` naming ``option``.
    """
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise InputError(f"{option} must look like module:function (got {spec!r})")
    try:
        module = _import_user_module(module_name, option)
    except InputError:
        raise
    except (Exception, SystemExit) as error:  # the user's module may fail in any way on import
        raise InputError(
            f"{option}: cannot import module {module_name!r} ({raised_by(error)})"
        ) from None
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise InputError(f"{option}: module {module_name!r} has no attribute {attribute!r}")
        target = getattr(target, part)
    if isinstance(target, nn.Module) or not callable(target):
        return target
    try:
        with _cwd_importable(_from_cwd(module)):
            return target()
    except (Exception, SystemExit) as error:  # user code: report it in one line
        raise InputError(f"{option}: {spec}() raised {raised_by(error)}") from None


def _from_cwd(module: ModuleType) -> bool:
    origin = getattr(module, "__file__", None)
    return origin is not None and Path(origin).resolve().is_relative_to(Path.cwd().resolve())


def _module_from(spec: str, option: str) -> nn.Module:
    model = load_entry_point(spec, option)
    if not isinstance(model, nn.Module):
        raise InputError(
            f"{option}: {spec} must return a torch.nn.Module (got {type(model).__name__})"
        )
    try:
        check_materialized(model)
    except InputError as error:
        raise InputError(f"{option}: {spec}: {error}") from None
    return model


# --- models --------------------------------------------------------------------------------------


def load_model(
    spec: str, *, arch: str | None = None, trust_pickle: bool = False
) -> tuple[nn.Module, str, list[str]]:
    """Load the model a user named with ``--model``, in eval mode on the CPU.

    Args:
        spec: a file (safetensors or ``torch.save`` weights with ``arch``, TorchScript,
            ``torch.export`` ``.pt2``, or a pickled whole model with ``trust_pickle``),
            ``module:function`` returning an ``nn.Module``, or a bundled model name.
        arch: ``module:factory`` returning the network that a weights file is loaded into.
        trust_pickle: allow ``torch.load(weights_only=False)`` for a file that needs it; this runs
            code from the file.

    Returns:
        ``(model, name, notes)``: the model in eval mode, a name for reports (the file name for a
        file) and notes for the user, such as :data:`PICKLE_WARNING`.

    Example:
        >>> model, name, notes = load_model("mnist-cnn")
        >>> name, model.training, notes
        ('mnist-cnn', False, [])

    """
    path = Path(spec)
    notes: list[str] = []
    if path.is_dir():
        raise InputError(
            f"--model: {_quote(spec)} is a folder; give a model file "
            "(.safetensors, .pt, .pt2), module:function or a bundled model name"
        )
    if path.is_file():
        model, arch_used = _load_model_file(path, arch, trust_pickle, notes)
        name = path.name
    elif path.exists():
        raise InputError(f"--model: {_quote(spec)} is not a regular file")
    elif ":" in spec:
        # The user's own module keeps the mode it was returned in: the audit evaluates in eval
        # mode and warns (a sanity check) if it came in train mode.
        return _module_from(spec, "--model"), spec, notes
    elif _looks_like_path(spec, MODEL_SUFFIXES):
        raise InputError(f"--model: no such file: {_quote(spec)}")
    else:
        if spec in zoo.list_defenses():
            raise InputError(
                f"--model: {spec!r} is a bundled defense, not a model; audit a model behind it "
                f"with --defense {spec}"
            )
        try:
            model = zoo.load(spec)
        except InputError as error:
            raise InputError(
                f"--model: {error}, or give a model file (.safetensors, .pt, .pt2) "
                "or module:function"
            ) from None
        arch_used, name = False, spec
    if arch is not None and not arch_used:
        notes.append(f"--arch {arch} was not used: {_quote(name)} is a whole model, not weights")
    return model.eval(), name, notes


def _load_model_file(
    path: Path, arch: str | None, trust_pickle: bool, notes: list[str]
) -> tuple[nn.Module, bool]:
    """Load a model file by its content; returns the model and whether ``arch`` built it."""
    shown = _quote(path)
    size = path.stat().st_size
    if size == 0:
        raise InputError(f"--model: {shown} is empty")
    with path.open("rb") as fh:
        head = fh.read(16)
    # By content, not by name: a TorchScript file may well be called model.pt2.
    if _looks_like_safetensors(head, size):
        return _load_safetensors(path, arch, notes), True
    if zipfile.is_zipfile(path):
        names = _zip_names(path, "--model")
        if export_layout(path) is not None:
            return _load_exported(path, trust_pickle, notes), False
        if "constants.pkl" in names and any(name.startswith("code/") for name in names):
            if not trust_pickle:
                check_torchscript_archive(path)
            return _load_torchscript(path, notes), False
        if not trust_pickle:
            check_torch_zip(path)
        return _load_torch_file(path, arch, trust_pickle, notes)
    if path.suffix.lower() == ".safetensors":
        return _load_safetensors(path, arch, notes), True
    if head.startswith(b"PK\x03\x04"):
        kind = "a torch.export program" if path.suffix.lower() == ".pt2" else "a PyTorch file"
        raise InputError(
            f"--model: cannot read {shown} as {kind}: it starts like a zip archive "
            "but is truncated or corrupt"
        )
    if path.suffix.lower() == ".pt2":
        raise InputError(
            f"--model: cannot read {shown} as a torch.export program: not a zip archive"
        )
    # Not a zip: perhaps the legacy torch.save format, which weights_only=True also reads.
    return _load_torch_file(path, arch, trust_pickle, notes)


def _zip_names(path: Path, option: str) -> set[str]:
    """Names inside a PyTorch zip archive, without the archive's top-level folder."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as error:
        raise InputError(f"{option}: cannot read {_quote(path)}: {error_line(error)}") from None
    return {name.partition("/")[2] for name in names}


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    """A safetensors file starts with the JSON header's length (u64, little-endian), then ``{``."""
    if len(head) < 9:
        return False
    (header_length,) = struct.unpack("<Q", head[:8])
    return head[8:9] == b"{" and 0 < header_length <= size - 8


def _load_safetensors(path: Path, arch: str | None, notes: list[str]) -> nn.Module:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    shown = _quote(path)
    if arch is None:
        raise InputError(
            f"--model: {shown} holds weights only; give --arch module:factory "
            "returning the network to load them into"
        )
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as error:
        raise InputError(
            f"--model: cannot read {shown} as safetensors: {error_line(error)}"
        ) from None
    model = _module_from(arch, "--arch")
    _load_weights(model, state, path, arch, notes)
    notes.append(f"loaded {len(state)} tensors from {shown} into --arch {arch}")
    return model


def _load_torchscript(path: Path, notes: list[str]) -> nn.Module:
    shown = _quote(path)
    try:
        # TorchScript archives hold TorchScript code and tensors, read by a restricted unpickler.
        model = torch.jit.load(str(path), map_location="cpu")
    except Exception as error:  # the TorchScript reader fails on damaged bytes in many ways
        raise InputError(
            f"--model: cannot read {shown} as TorchScript: {error_line(error)}"
        ) from None
    notes.append(f"read {shown} as a TorchScript program")
    return model


def _load_torch_file(
    path: Path, arch: str | None, trust_pickle: bool, notes: list[str]
) -> tuple[nn.Module, bool]:
    """A ``torch.save`` file: a state dict (with ``arch``), or a pickled model if trusted."""
    shown = _quote(path)
    try:
        loaded: Any = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # Only a file that weights_only refused, not a broken one, may need --trust-pickle.
        refused = "Weights only load failed" in str(error)
        needs = _UNSAFE_GLOBAL.search(str(error))
        if not refused or (needs is None and not trust_pickle):
            raise InputError(
                f"--model: cannot read {shown} as a PyTorch file: {_weights_only_reason(error)}"
            ) from None
        if needs is not None and not trust_pickle:
            raise InputError(
                f"--model: {shown} is a pickled Python object (it needs {needs.group(1)}) and "
                "loading it would run code from the file; pass --trust-pickle only if you trust "
                "its source, or save a state dict, safetensors, TorchScript or torch.export file"
            ) from None
        try:  # the pickle may name classes from the user's own modules in the current folder
            with _cwd_importable():
                loaded = torch.load(path, map_location="cpu", weights_only=False)
        except (Exception, SystemExit) as error:  # the file's own code runs here
            raise InputError(
                f"--model: cannot read {shown} with --trust-pickle "
                f"({type(error).__name__}: {error_line(error)})"
            ) from None
        notes.append(PICKLE_WARNING)
    except EOFError:
        raise InputError(
            f"--model: cannot read {shown} as a PyTorch file: it ends early (truncated?)"
        ) from None
    except Exception as error:  # the restricted unpickler fails on damaged bytes in many ways
        raise InputError(
            f"--model: cannot read {shown} as a PyTorch file: {error_line(error)}"
        ) from None
    if isinstance(loaded, nn.Module):
        return loaded, False
    state = _state_dict_from(loaded, path, notes)
    if arch is None:
        raise InputError(
            f"--model: {shown} holds weights only (a state dict of {len(state)} tensors); "
            "give --arch module:factory returning the network to load them into"
        )
    model = _module_from(arch, "--arch")
    _load_weights(model, state, path, arch, notes)
    notes.append(f"loaded a state dict of {len(state)} tensors from {shown} into --arch {arch}")
    return model, True


def _state_dict_from(loaded: Any, path: Path, notes: list[str]) -> dict[str, torch.Tensor]:
    """The state dict in what ``torch.load`` returned: itself, or a checkpoint's entry."""
    if isinstance(loaded, dict):
        if loaded and all(isinstance(v, torch.Tensor) for v in loaded.values()):
            return dict(loaded)
        for key in _STATE_DICT_KEYS:
            inner = loaded.get(key)
            if isinstance(inner, dict) and all(isinstance(v, torch.Tensor) for v in inner.values()):
                notes.append(f"used the {key!r} entry of the checkpoint {_quote(path)}")
                return dict(inner)
        keys = _few(str(k) for k in loaded)
        raise InputError(
            f"--model: {_quote(path)} holds a dict ({keys}) that is not a state dict; "
            "expected tensors by name or a 'state_dict' entry"
        )
    raise InputError(
        f"--model: {_quote(path)} holds a {type(loaded).__name__}, not a model or a state dict"
    )


def _load_weights(
    model: nn.Module, state: dict[str, torch.Tensor], path: Path, arch: str, notes: list[str]
) -> None:
    """``model.load_state_dict(state, strict=True)``, with mismatches told in one line."""
    expected = model.state_dict()
    prefix = "module."
    if (
        state
        and all(key.startswith(prefix) for key in state)
        and not any(key.startswith(prefix) for key in expected)
    ):
        state = {key[len(prefix) :]: value for key, value in state.items()}
        notes.append(f"removed the {prefix!r} prefix of the keys (a DataParallel checkpoint)")
    where = f"--model: the weights in {_quote(path)} do not fit --arch {arch}"
    missing, unexpected = set(expected) - set(state), set(state) - set(expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing ({_few(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected ({_few(unexpected)})")
        raise InputError(f"{where}: keys {'; '.join(parts)}")
    wrong = [k for k in sorted(state) if tuple(state[k].shape) != tuple(expected[k].shape)]
    if wrong:
        key = wrong[0]
        more = f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""
        raise InputError(
            f"{where}: {_quote(key)} has shape {tuple(state[key].shape)} in the file "
            f"but {tuple(expected[key].shape)} in the network{more}"
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise InputError(f"{where}: {error_line(error)}") from None


# --- torch.export programs -----------------------------------------------------------------------


class _ExportedModel(nn.Module):
    """A ``torch.export`` program as an ordinary module.

    The program's module refuses ``train()`` and ``eval()``; here they only set the flag (the
    graph keeps the mode it was exported in). A program exported for a fixed batch size runs
    larger and smaller batches in chunks of that size, the last chunk padded with zeros.
    """

    def __init__(self, program: nn.Module, batch: int | None) -> None:
        super().__init__()
        self.program = program
        self.batch = batch

    def train(self, mode: bool = True) -> _ExportedModel:
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


def _load_exported(path: Path, trust_pickle: bool, notes: list[str]) -> nn.Module:
    shown = _quote(path)
    layout = export_layout(path)
    if trust_pickle:
        notes.append(PICKLE_WARNING)
    elif layout == "legacy":
        raise InputError(
            f"--model: {shown} is a torch.export archive in the layout of PyTorch < 2.7, whose "
            "entries are pickles; re-save it with torch.export.save from a newer PyTorch, or "
            "pass --trust-pickle only if you trust its source"
        )
    else:
        check_export_archive(path)
    try:
        with _quiet("torch.export", "torch._export"), _cwd_importable(trust_pickle):
            program = torch.export.load(path)
            module = program.module()
    except Exception as error:  # the deserializer fails on a malformed archive in many ways
        raise InputError(
            f"--model: cannot read {shown} as a torch.export program: {error_line(error)}"
        ) from None
    if not trust_pickle:
        check_export_graph(module, shown)
    user_inputs = list(program.graph_signature.user_inputs)
    if len(user_inputs) != 1:
        raise InputError(
            f"--model: the program in {shown} takes {len(user_inputs)} inputs; "
            "mlsec gives it one batch of images"
        )
    batch = None
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name == user_inputs[0]:
            value = node.meta.get("val")
            shape = getattr(value, "shape", None)
            if shape and isinstance(shape[0], int):
                batch = shape[0]
    notes.append(
        f"read {shown} as a torch.export program; it runs in the mode (eval or train) "
        "it was exported in"
    )
    if batch is not None:
        notes.append(
            f"{shown} was exported for batches of exactly {batch}: mlsec runs it {batch} "
            "samples at a time; export with a dynamic batch dimension to run faster"
        )
    return _ExportedModel(module, batch)


# --- data ----------------------------------------------------------------------------------------


def load_data(spec: str) -> tuple[tuple[torch.Tensor, torch.Tensor], str, list[str]]:
    """Load the data a user named with ``--data``.

    Args:
        spec: ``mnist-sample``; an ``.npz`` file with arrays ``x`` (uint8 or float images,
            ``[N,H,W]``, ``[N,C,H,W]`` or ``[N,H,W,C]``) and ``y`` (integer labels); an image
            folder with one subfolder per class; or ``module:function`` returning a Dataset, a
            DataLoader or ``(x, y)``.

    Returns:
        ``((x, y), name, notes)``: float32 inputs ``[N, ...]``, int64 labels ``[N]``, a name for
        reports and notes for the user (how the layout and the scale were read, the classes).

    Example:
        >>> (x, y), name, notes = load_data("mnist-sample")
        >>> tuple(x.shape), name, notes
        ((2000, 1, 28, 28), 'mnist-sample', [])

    """
    path = Path(spec)
    if path.is_dir():
        return _load_image_folder(path)
    if path.is_file():
        return _load_npz(path)
    if path.exists():
        raise InputError(f"--data: {_quote(spec)} is not a regular file or folder")
    if ":" in spec:
        return as_tensors(load_entry_point(spec, "--data"), "--data"), spec, []
    if _looks_like_path(spec, DATA_SUFFIXES):
        raise InputError(f"--data: no such file or folder: {_quote(spec)}")
    if spec not in BUNDLED_DATA:
        raise InputError(
            f"--data: unknown data set {spec!r}; use {', '.join(BUNDLED_DATA)}, "
            "an .npz file, an image folder or module:function"
        )
    return BUNDLED_DATA[spec](), spec, []


def _load_npz(path: Path) -> tuple[tuple[torch.Tensor, torch.Tensor], str, list[str]]:
    shown = _quote(path)
    option = f"--data {shown}"
    if path.stat().st_size == 0:
        raise InputError(f"{option}: the file is empty")
    with path.open("rb") as fh:
        head = fh.read(6)
    if head[:4] != b"PK\x03\x04" and head != b"\x93NUMPY":
        raise InputError(
            f"{option}: not an .npz archive; give an .npz file with arrays x and y, "
            "an image folder or module:function"
        )
    notes: list[str] = []
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as error:  # numpy's reader fails on damaged bytes in many ways
        raise InputError(
            f"{option}: cannot read it as an .npz archive: {error_line(error)}"
        ) from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise InputError(
            f"{option}: holds a single array; save inputs and labels together with "
            "numpy.savez(path, x=images, y=labels)"
        )
    with archive:
        missing = [key for key in ("x", "y") if key not in archive.files]
        if missing:
            raise InputError(
                f"{option}: no array {' or '.join(map(repr, missing))} "
                f"(found {_few(archive.files, 5) or 'none'}); "
                "save them with numpy.savez(path, x=images, y=labels)"
            )
        arrays = {}
        for key in ("x", "y"):
            try:
                arrays[key] = archive[key]
            except ValueError as error:
                if "allow_pickle" in str(error):
                    raise InputError(
                        f"{option}: array {key!r} holds Python objects, which mlsec does not "
                        "unpickle; save numeric arrays"
                    ) from None
                raise InputError(
                    f"{option}: cannot read array {key!r}: {error_line(error)}"
                ) from None
            except Exception as error:  # numpy's reader fails on damaged bytes in many ways
                raise InputError(
                    f"{option}: cannot read array {key!r}: {error_line(error)}"
                ) from None
    images, labels = arrays["x"], arrays["y"]
    x = _images_from_array(images, option, notes)
    if labels.dtype.kind not in "iu":
        raise InputError(f"{option}: labels y must be integers (got {labels.dtype})")
    y = torch.from_numpy(labels.astype(np.int64))
    x, y = as_tensors((x, y), option)
    if images.dtype != np.uint8:
        low, high = float(x.min()), float(x.max())
        notes.append(f"x is {images.dtype}: used as it is; it spans [{low:g}, {high:g}]")
    return (x, y), path.name, notes


def _images_from_array(images: np.ndarray, option: str, notes: list[str]) -> torch.Tensor:
    """Float32 NCHW images from a uint8 or float array in NCHW, NHWC or NHW layout."""
    if images.dtype == np.uint8:
        scaled = images.astype(np.float32) / np.float32(255.0)
        notes.append("x is uint8: divided by 255 to [0, 1]")
    elif images.dtype.kind == "f":
        scaled = images.astype(np.float32)
    else:
        raise InputError(
            f"{option}: x must be uint8 (0-255) or floating point (got {images.dtype}); "
            "for 0-255 pixels save x.astype('uint8')"
        )
    shape = images.shape
    if images.ndim == 3:
        notes.append(f"x has shape {shape}: read as 1-channel images [N,H,W], made [N,1,H,W]")
        return torch.from_numpy(scaled).unsqueeze(1)
    if images.ndim != 4:
        raise InputError(
            f"{option}: x must hold images [N,H,W], [N,C,H,W] or [N,H,W,C] (got shape {shape})"
        )
    if shape[3] in (1, 3) and shape[1] not in (1, 3):
        notes.append(f"x has shape {shape}: assumed NHWC [N,H,W,C], transposed to NCHW")
        return torch.from_numpy(np.ascontiguousarray(scaled.transpose(0, 3, 1, 2)))
    ambiguous = " (ambiguous)" if shape[3] in (1, 3) else ""
    notes.append(f"x has shape {shape}: assumed NCHW [N,C,H,W]{ambiguous}")
    return torch.from_numpy(scaled)


def _walk_images(folder: Path) -> list[Path]:
    """Image files under ``folder``, sorted; hidden files and folders are skipped."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found.extend(
            Path(dirpath) / name
            for name in filenames
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES
        )
    return sorted(found)


def _read_image(path: Path) -> tuple[np.ndarray, str, tuple[int, int], bool]:
    """Pixels (uint8, HxW for gray, HxWx3 else), the mode, (width, height) and alpha presence.

    Raises the reader's own errors; the caller names the file.
    """
    from PIL import Image

    with Image.open(path, formats=_PIL_FORMATS) as image:
        image.load()
        mode, size = image.mode, image.size
        alpha = "A" in image.getbands() or "transparency" in image.info
        if mode in _PIL_UNSUPPORTED:
            return np.zeros(0, np.uint8), mode, size, alpha
        converted = image.convert("L" if mode in _PIL_GRAY else "RGB")
        return np.asarray(converted, dtype=np.uint8), mode, size, alpha


# Starts the note that names each class folder's label when the labels are not simply folder "i"
# is class i: a surprise there changes every accuracy silently, so the CLI always prints it.
CLASS_MAP_NOTE = "class labels from the folder names"
_DECIMAL = re.compile(r"[0-9]+")
_MAX_LABEL = 2**63 - 1  # labels are int64


def image_folder_classes(root: Path) -> dict[str, int]:
    """The label of each class folder of an image folder, in label order.

    When every class folder's name is a decimal number (ASCII digits only, such as ``7`` or
    ``007``), the label is that number; otherwise the labels follow the sorted names: 0, 1, ...
    Hidden folders (``.name``) are not classes.

    Args:
        root: the image folder, holding one subfolder per class.

    Returns:
        Folder name → label, ordered by label.

    Raises:
        InputError: there are no class folders, or two names are the same number (``7`` and
            ``07``).

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> for name in ("9", "0", "4"):
        ...     (root / name).mkdir()
        >>> image_folder_classes(root)
        {'0': 0, '4': 4, '9': 9}

    """
    option = f"--data {_quote(root)}"
    with os.scandir(root) as entries:
        names = sorted(
            entry.name for entry in entries if entry.is_dir() and not entry.name.startswith(".")
        )
    if not names:
        loose = sum(1 for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        found = f"it has {loose} images but no subfolders" if loose else "it is empty"
        raise InputError(f"{option}: an image folder needs one subfolder per class; {found}")
    if not all(_DECIMAL.fullmatch(name) for name in names):
        return {name: index for index, name in enumerate(names)}
    classes: dict[str, int] = {}
    for name in sorted(names, key=lambda name: (int(name), name)):
        label = int(name)
        if label > _MAX_LABEL:
            raise InputError(f"{option}: class folder {name} is too large a number for a label")
        if label in classes.values():
            other = next(n for n, value in classes.items() if value == label)
            raise InputError(
                f"{option}: class folders {other} and {name} are both class {label}; "
                "merge them or rename one"
            )
        classes[name] = label
    return classes


def _class_note(classes: dict[str, int]) -> str:
    """The note naming each folder's label.

    It starts with :data:`CLASS_MAP_NOTE` unless folder ``i`` is class ``i`` for every i from 0.
    """
    pairs = list(classes.items())
    shown = ", ".join(f"{label}={_quote(name)}" for name, label in pairs[:20])
    if len(pairs) > 20:
        shown += f", ... ({len(pairs)} classes)"
    if [name for name, _ in pairs] == [str(i) for i in range(len(pairs))]:
        return f"class labels are the folder numbers: {shown}"
    how = "the folder numbers" if all(_DECIMAL.fullmatch(n) for n in classes) else "sorted names"
    return f"{CLASS_MAP_NOTE}: {shown} (label=folder, by {how})"


def _load_image_folder(root: Path) -> tuple[tuple[torch.Tensor, torch.Tensor], str, list[str]]:
    from PIL import Image

    shown = _quote(root)
    option = f"--data {shown}"
    classes = image_folder_classes(root)
    files: list[tuple[Path, int]] = []
    for name, index in classes.items():
        images = _walk_images(root / name)
        if not images:
            raise InputError(
                f"{option}: class folder {_quote(name)} holds no images "
                f"({', '.join(sorted(IMAGE_SUFFIXES))}); add some or remove the folder"
            )
        files.extend((image, index) for image in images)

    pixels: list[np.ndarray] = []
    first: tuple[Path, tuple[int, int]] | None = None
    gray, with_alpha = True, 0
    for file, _ in files:
        rel = _quote(file.relative_to(root))
        try:
            array, mode, size, alpha = _read_image(file)
        except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as error:
            raise InputError(f"{option}: cannot read image {rel}: {error_line(error)}") from None
        if mode in _PIL_UNSUPPORTED:
            raise InputError(
                f"{option}: image {rel} has mode {mode} (16- or 32-bit); save 8-bit images"
            )
        if first is None:
            first = (file, size)
        elif size != first[1]:
            raise InputError(
                f"{option}: images differ in size: {rel} is {size[0]}x{size[1]} but "
                f"{_quote(first[0].relative_to(root))} is {first[1][0]}x{first[1][1]}; "
                "resize them to one size"
            )
        gray = gray and mode in _PIL_GRAY
        with_alpha += alpha
        pixels.append(array)
    if gray:
        x = torch.from_numpy(np.stack(pixels)).unsqueeze(1)
    else:
        rgb = [p if p.ndim == 3 else np.repeat(p[..., None], 3, axis=2) for p in pixels]
        x = torch.from_numpy(np.stack(rgb)).permute(0, 3, 1, 2).contiguous()
    y = torch.tensor([index for _, index in files], dtype=torch.int64)
    (x, y) = as_tensors((x.float() / 255.0, y), option)

    channels, height, width = x.shape[1:]
    notes = [
        f"read {len(files)} images in {len(classes)} classes from image folder {shown}: "
        f"{channels}-channel {width}x{height}, pixels divided by 255 to [0, 1]",
        _class_note(classes),
    ]
    if with_alpha:
        notes.append(f"dropped the alpha channel of {with_alpha} images")
    return (x, y), root.resolve().name or str(root), notes


# --- normalization -------------------------------------------------------------------------------


def parse_normalize(text: str) -> tuple[list[float], list[float]]:
    """Parse ``--normalize``: ``MEAN,STD`` for one channel or ``M1,...,Mc,S1,...,Sc`` for c.

    Example:
        >>> parse_normalize("0.5,0.5,0.5,0.25,0.25,0.25")
        ([0.5, 0.5, 0.5], [0.25, 0.25, 0.25])

    """
    usage = "give MEAN,STD or the means then the stds per channel, e.g. 0.5,0.5,0.5,0.2,0.2,0.2"
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        raise InputError(
            f"--normalize: expected comma-separated numbers (got {text!r}); {usage}"
        ) from None
    if len(values) % 2:
        raise InputError(f"--normalize: got {len(values)} numbers, an odd count; {usage}")
    if not all(math.isfinite(v) for v in values):
        raise InputError(f"--normalize: values must be finite (got {text!r})")
    half = len(values) // 2
    mean, std = values[:half], values[half:]
    if any(s <= 0 for s in std):
        raise InputError(f"--normalize: std values must be > 0 (got {','.join(map(str, std))})")
    return mean, std


def apply_normalize(
    model: nn.Module, mean: list[float], std: list[float], *, channels: int | None = None
) -> nn.Module:
    """Wrap ``model`` so it takes pixels and normalizes them itself: ``model((x - mean) / std)``.

    Args:
        model: the model that expects normalized inputs.
        mean: per-channel means (or one value for every channel).
        std: per-channel standard deviations, each > 0.
        channels: the data's channel count, if known; ``mean`` must have 1 or that many values.

    """
    if channels is not None and len(mean) not in (1, channels):
        raise InputError(
            f"--normalize gives {len(mean)} channels but the inputs have {channels}; "
            "give one mean and std, or one per channel"
        )
    return Normalized(model, mean, std).eval()
