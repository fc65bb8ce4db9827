"""Durable audit checkpoints: each finished batch's per-sample results, appended and fsynced.

A checkpoint folder holds ``meta.json`` (the fingerprint of the run: the model's weights and code,
the data, the resolved suite with its seeds, batch size, survivors mode, mlsec and torch versions)
and ``batches.jsonl`` (one line per finished batch: stage, batch number, the sample indices
attacked and those broken, seconds, and a checksum). A run killed at any moment, SIGKILL included,
leaves at most a partial last line, which is discarded on resume. Because the runner splits the
survivors into the same batches in the same order, a resumed run replays the recorded batches and
attacks only the rest, ending with exactly the numbers of an uninterrupted run.

Nothing stale is trusted: a folder whose fingerprint differs, whose ``meta.json`` is missing or
unreadable, or whose records fail their checksum (a SHA-256 over the record and the fingerprint,
so a line edited by hand or copied from another checkpoint fails too) or their checks (types,
sample indices in range) is refused with a one-line :class:`~mlsec.errors.InputError`; it is never
re-initialised around old records.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import math
import os
import re
import stat
import sys
import types
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mlsec._files import write_atomic
from mlsec.errors import InputError

__all__ = [
    "BatchRecord",
    "Checkpoint",
    "fingerprint_code",
    "fingerprint_model",
    "fingerprint_tensors",
]

# 2: records carry a checksum; the fingerprint holds the model's code and the versions.
FORMAT = 2

# The fingerprint's keys in plain words, for the message that refuses a folder.
_WHAT = {
    "model": "the model's weights",
    "code": "the model's code or layers",
    "data": "the data",
    "suite": "the attacks, their settings or seeds, or the eps grid",
    "batch_size": "the batch size",
    "survivors": "the survivors-only setting",
    "mlsec": "the mlsec version",
    "torch": "the torch version",
}
_FIELDS = {"stage", "batch", "indices", "broken", "seconds", "checksum"}
_FRESH = "use a new folder or delete this one"


def fingerprint_tensors(*tensors: torch.Tensor) -> str:
    """SHA-256 over the tensors' shapes, dtypes and bytes."""
    digest = hashlib.sha256()
    for tensor in tensors:
        t = tensor.detach().cpu().contiguous()
        flat = t.reshape(-1)  # a 0-dim tensor (BatchNorm's step count) cannot be viewed as bytes
        digest.update(f"{tuple(t.shape)}{t.dtype}".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def fingerprint_model(model: nn.Module) -> str:
    """SHA-256 over the model's weights: every tensor its outputs depend on, and its class name.

    That is the state dict (names, shapes, dtypes, values) and the tensors a state dict leaves
    out: non-persistent buffers, tensors held as plain attributes (a ``torch.export`` program's
    lifted constants) and TorchScript tensor attributes. The code is :func:`fingerprint_code`'s.
    """
    digest = hashlib.sha256(type(model).__qualname__.encode())
    state = model.state_dict()
    for name, value in sorted(state.items(), key=lambda item: item[0]):
        digest.update(name.encode())
        if isinstance(value, torch.Tensor):
            digest.update(fingerprint_tensors(value).encode())
    for name, tensor in sorted(_unsaved_tensors(model, set(state)), key=lambda item: item[0]):
        digest.update(f"unsaved {name}".encode())
        digest.update(fingerprint_tensors(tensor).encode())
    return digest.hexdigest()


def _unsaved_tensors(model: nn.Module, saved: set[str]) -> Iterator[tuple[str, torch.Tensor]]:
    """The tensors of ``model`` that are not in its state dict (whose keys are ``saved``)."""
    for prefix, module in model.named_modules():
        dot = f"{prefix}." if prefix else ""
        own = {name for name, _ in module.named_parameters(recurse=False)}
        own |= {name for name, _ in module.named_buffers(recurse=False)}
        for name, buffer in module.named_buffers(recurse=False):
            if dot + name not in saved:
                yield dot + name, buffer
        attributes = list(vars(module).items())
        if isinstance(module, torch.jit.ScriptModule):
            try:  # TorchScript keeps its attributes in C++, out of vars()
                handle: Any = module._c
                iterators: Any = torch._C._jit_debug_module_iterators  # type: ignore[attr-defined]
                found = iterators(handle)["named_attributes"]
                attributes += list(found)
            except (AttributeError, KeyError, RuntimeError, TypeError):
                pass
        for name, value in attributes:
            if isinstance(value, torch.Tensor) and name not in own and dot + name not in saved:
                yield dot + name, value


def fingerprint_code(model: nn.Module) -> str:
    """SHA-256 over the code that turns the model's weights and inputs into its outputs.

    Module by module (every one in ``model.modules()``), it covers:

    * its place and kind: its name in the tree, its class name and its ``extra_repr()`` (a
      layer's settings: a convolution's stride, a dropout's rate), so that swapping ``ReLU`` for
      ``Tanh`` in an ``nn.Sequential`` counts although no weight changes;
    * a Python class: the whole source file of the class and of each base class in its MRO, the
      file rather than the class, so that an edit to a helper function beside it counts too. The
      file is read as it is on disk when the audit starts (a rerun imports that same file).
      Classes of torch itself, the standard library and builtins are left out: the audit keys its
      checkpoints on the torch version instead;
    * a TorchScript module (``torch.jit.ScriptModule``, scripted or traced): each method's code,
      its inlined graph without source locations (which holds the scripted functions it calls)
      and its constants;
    * an fx ``GraphModule`` (what ``torch.export``'s ``ExportedProgram.module()`` returns, held by
      the wrapper mlsec loads ``.pt2`` files into): its generated code;
    * functions set on the instance (``model.forward = ...``), forward and backward hooks, and
      objects of other classes held as attributes: the source file of the function or class.

    A source file that cannot be read (a class typed into a REPL) is replaced by the source
    ``inspect.getsource`` still finds (a notebook keeps it), else by the bytecode, names and
    constants of the class's functions, which misses edits to the module-level helpers they call;
    a callable with none of these counts by its qualified name only. Plain Python attributes that
    ``extra_repr()`` does not show (a float ``self.scale``) are not covered.

    Args:
        model: the classifier.

    Returns:
        The hex digest; equal for the same code however often the model is built or loaded.

    """
    hasher = _CodeHasher()
    digest = hashlib.sha256()
    for name, module in model.named_modules():
        for part in hasher.module(name, module):
            digest.update(part.encode())
            digest.update(b"\n")
    return digest.hexdigest()


def _is_library(module_name: str | None) -> bool:
    """Whether code in ``module_name`` is torch's, the standard library's or a builtin."""
    top = (module_name or "").partition(".")[0]
    return top in ("torch", "builtins") or top in sys.stdlib_module_names


def _code_object(code: types.CodeType) -> str:
    """SHA-256 over a code object's bytecode, names and constants, nested code included."""
    digest = hashlib.sha256(code.co_code)
    digest.update(repr((code.co_names, code.co_varnames, code.co_freevars)).encode())
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            digest.update(_code_object(const).encode())
        elif isinstance(const, frozenset):  # its repr's order follows string hashing
            digest.update(repr(sorted(repr(item) for item in const)).encode())
        else:
            digest.update(repr(const).encode())
    return digest.hexdigest()


class _CodeHasher:
    """The parts :func:`fingerprint_code` hashes, reading each source file once."""

    def __init__(self) -> None:
        self._files: dict[str, str | None] = {}

    def module(self, name: str, module: nn.Module) -> Iterator[str]:
        cls = type(module)
        try:
            extra = module.extra_repr()
        except Exception as error:  # user code: its failure must not fail the audit
            extra = f"<extra_repr failed: {type(error).__name__}>"
        yield f"module {name!r}: {cls.__qualname__}({extra})"
        yield from self.classes(cls)
        if isinstance(module, torch.jit.ScriptModule):
            yield from self._script(module)
        if isinstance(module, torch.fx.GraphModule):
            yield f"fx code: {module.code}"
        for key, value in vars(module).items():
            if key in _MODULE_INTERNALS or isinstance(value, (torch.Tensor, nn.Module)):
                continue
            if isinstance(value, type):
                yield from (f"attribute {key}: {part}" for part in self.classes(value))
            elif callable(value) or not _is_library(type(value).__module__):
                yield f"attribute {key}: {self.function(value)}"
        for kind in (
            "_forward_pre_hooks",
            "_forward_hooks",
            "_backward_pre_hooks",
            "_backward_hooks",
        ):
            for hook in getattr(module, kind, {}).values():
                yield f"{kind}: {self.function(hook)}"

    def classes(self, cls: type) -> Iterator[str]:
        for base in cls.__mro__:
            if not _is_library(base.__module__):
                yield f"class {base.__qualname__}: {self._source(base)}"

    def function(self, value: object) -> str:
        while isinstance(value, functools.partial):
            value = value.func
        if isinstance(value, types.MethodType):
            value = value.__func__
        if isinstance(value, types.FunctionType):
            if _is_library(value.__module__):
                return f"{value.__module__}.{value.__qualname__}"
            return f"function {value.__qualname__}: {self._source(value)}"
        if isinstance(value, types.BuiltinFunctionType):
            return f"builtin {getattr(value, '__module__', None)}.{value.__qualname__}"
        return f"{type(value).__qualname__} object: " + "; ".join(self.classes(type(value)))

    def _file(self, path: str) -> str | None:
        if path not in self._files:
            try:
                self._files[path] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
            except OSError:
                self._files[path] = None
        return self._files[path]

    def _source(self, obj: type | types.FunctionType) -> str:
        """The digest of the file defining ``obj``, else of the source or bytecode found."""
        try:
            path = inspect.getsourcefile(obj)
        except (OSError, TypeError):  # a builtin, or a class whose module is gone
            path = None
        if path:
            found = self._file(path)
            if found is not None:
                return f"file {found}"
        try:
            return "source " + hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()
        except (OSError, TypeError):
            pass
        if isinstance(obj, types.FunctionType):
            return f"bytecode {_code_object(obj.__code__)}"
        codes = []
        for key, member in sorted(vars(obj).items(), key=lambda item: item[0]):
            if isinstance(member, (staticmethod, classmethod)):
                member = member.__func__
            if isinstance(member, property):
                member = member.fget
            if isinstance(member, types.FunctionType):
                codes.append(f"{key} {_code_object(member.__code__)}")
        if codes:
            return "bytecode " + hashlib.sha256(" ".join(codes).encode()).hexdigest()
        return "no source"

    @staticmethod
    def _script(module: torch.jit.ScriptModule) -> Iterator[str]:
        handle: Any = module._c
        try:
            names = sorted(handle._method_names())
        except (AttributeError, RuntimeError):
            yield _unmangled(f"script code: {getattr(module, 'code', '')}")
            return
        for name in names:
            method = handle._get_method(name)
            yield _unmangled(f"script method {name}: {method.code}")
            yield _unmangled(f"script graph {name}: {method.inlined_graph.str(False)}")
            constants = method.code_with_constants[1]
            constants = getattr(constants, "const_mapping", constants)  # a dict or a ConstMap
            for key, value in sorted(constants.items(), key=lambda item: item[0]):
                shown = (
                    fingerprint_tensors(value) if isinstance(value, torch.Tensor) else repr(value)
                )
                yield f"script constant {name}.{key}: {shown}"


def _unmangled(text: str) -> str:
    """``text`` without the numbers TorchScript adds to a class's name on each compilation."""
    return _MANGLE.sub("", text)


_MANGLE = re.compile(r"___torch_mangle_\d+\.")
# What every nn.Module holds in its __dict__ (flags, parameter and hook tables, ...): not code.
_MODULE_INTERNALS = frozenset(vars(nn.Module()))


@dataclass(frozen=True, kw_only=True)
class BatchRecord:
    """One finished batch: which samples were attacked and which of them were broken."""

    stage: int
    batch: int
    indices: list[int]
    broken: list[int]
    seconds: float


def _canonical(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class Checkpoint:
    """A checkpoint folder for one audit configuration.

    Args:
        directory: the folder; created (with its parents) if missing.
        fingerprint: everything that decides the numbers, as JSON data; a folder made with
            another fingerprint is refused.
        samples: the number of samples in the data set, to check the recorded indices against.

    Raises:
        InputError: the folder cannot be used: not a folder, not writable, made for a different
            audit or by an older mlsec, or holding records that fail their checks.

    """

    def __init__(
        self, directory: Path, fingerprint: dict[str, Any], *, samples: int | None = None
    ) -> None:
        self.directory = directory
        self.samples = samples
        self._meta = directory / "meta.json"
        self._log = directory / "batches.jsonl"
        # Through JSON once, so tuples and lists compare as they will after a reload.
        self.fingerprint = json.loads(json.dumps({"format": FORMAT, **fingerprint}))
        self._key = hashlib.sha256(_canonical(self.fingerprint).encode()).hexdigest()
        self._prepare_folder()
        meta_exists = self._regular_or_absent(self._meta)
        log_exists = self._regular_or_absent(self._log)
        if meta_exists:
            self._check_meta()
        elif log_exists and self._log.stat().st_size > 0:
            raise InputError(
                f"--checkpoint: {directory} holds batches.jsonl but no meta.json, so its records "
                f"cannot be matched to an audit; {_FRESH}"
            )
        else:
            self._write(
                self._meta,
                lambda: write_atomic(
                    self._meta, json.dumps(self.fingerprint, indent=2, sort_keys=True) + "\n"
                ),
            )
        self._write(self._log, lambda: self._log.open("ab").close())  # writable before any attack
        self.records: dict[tuple[int, int], BatchRecord] = self._read_log()

    def _prepare_folder(self) -> None:
        directory = self.directory
        try:
            if directory.exists() and not directory.is_dir():
                raise InputError(
                    f"--checkpoint: {directory} exists and is not a folder; give a folder"
                )
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise InputError(
                f"--checkpoint: cannot create the folder {directory} "
                f"({error.strerror or error}); give a folder you can write to"
            ) from None
        if not os.access(directory, os.W_OK | os.X_OK):
            raise InputError(
                f"--checkpoint: cannot write to the folder {directory} (permission denied); "
                "give a folder you can write to"
            )

    def _regular_or_absent(self, path: Path) -> bool:
        """Whether ``path`` exists; refuses it if it is anything but a regular file."""
        try:
            mode = path.lstat().st_mode
        except FileNotFoundError:
            return False
        except OSError as error:
            raise InputError(
                f"--checkpoint: cannot read {path} ({error.strerror or error}); {_FRESH}"
            ) from None
        if stat.S_ISREG(mode):
            return True
        if stat.S_ISDIR(mode):
            kind = "a folder"
        elif stat.S_ISLNK(mode):
            kind = "a symbolic link"
        else:
            kind = "a special file"
        raise InputError(f"--checkpoint: {path} is {kind}, not a regular file; {_FRESH}")

    @staticmethod
    def _write(path: Path, action: Callable[[], object]) -> None:
        try:
            action()
        except OSError as error:
            raise InputError(
                f"--checkpoint: cannot write {path} ({error.strerror or error}); "
                "give a folder you can write to"
            ) from None

    def _check_meta(self) -> None:
        try:
            text = self._meta.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise InputError(
                f"--checkpoint: {self._meta} is unreadable ({error}); {_FRESH}"
            ) from None
        try:
            saved = json.loads(text)
        except ValueError:
            raise InputError(
                f"--checkpoint: {self._meta} is not valid JSON, so its audit is unknown; {_FRESH}"
            ) from None
        if not isinstance(saved, dict):
            raise InputError(
                f"--checkpoint: {self._meta} holds a JSON {_json_kind(saved)}, not the object "
                f"mlsec writes; {_FRESH}"
            )
        made = saved.get("format")
        if made != FORMAT:
            formats = f"(checkpoint format {made}, this one reads {FORMAT})"
            if isinstance(made, int) and not isinstance(made, bool):
                reason = f"was made by {'an older' if made < FORMAT else 'a newer'} mlsec {formats}"
            else:
                reason = "has a meta.json without a checkpoint format"
            raise InputError(f"--checkpoint: {self.directory} {reason}; {_FRESH}")
        differing = sorted(
            key
            for key in set(saved) | set(self.fingerprint)
            if saved.get(key) != self.fingerprint.get(key)
        )
        if differing:
            changed = [_WHAT.get(key, repr(key)) for key in differing]
            said = " and ".join([", ".join(changed[:-1]), changed[-1]] if changed[:-1] else changed)
            raise InputError(
                f"--checkpoint: {self.directory} belongs to a different audit: "
                f"{said} changed; {_FRESH}"
            )

    def _checksum(self, fields: dict[str, Any]) -> str:
        """SHA-256 over the record's fields and this checkpoint's fingerprint."""
        return hashlib.sha256(f"{self._key}\n{_canonical(fields)}".encode()).hexdigest()

    def _parse(self, line: bytes) -> BatchRecord:
        """The record on ``line``; raises ``ValueError`` saying what is wrong with it."""
        try:
            item = json.loads(line)
        except ValueError:
            raise ValueError("it is not valid JSON") from None
        if not isinstance(item, dict) or set(item) != _FIELDS:
            raise ValueError(f"it needs exactly the fields {', '.join(sorted(_FIELDS))}")
        for key in ("stage", "batch"):
            if not _is_int(item[key]) or item[key] < 0:
                raise ValueError(f"{key} must be an integer >= 0 (got {item[key]!r})")
        indices, broken = item["indices"], item["broken"]
        for key, values in (("indices", indices), ("broken", broken)):
            if not isinstance(values, list) or not all(_is_int(v) for v in values):
                raise ValueError(f"{key} must be a list of integers")
            if len(set(values)) != len(values):
                raise ValueError(f"{key} repeats a sample")
        if not set(broken) <= set(indices):
            raise ValueError("broken lists samples that are not in indices")
        limit = self.samples
        outside = [i for i in indices if i < 0 or (limit is not None and i >= limit)]
        if outside:
            raise ValueError(
                f"sample index {outside[0]} is out of range (the data has {limit} samples)"
                if limit is not None
                else f"sample index {outside[0]} is negative"
            )
        seconds = item["seconds"]
        if not isinstance(seconds, (int, float)) or isinstance(seconds, bool):
            raise ValueError(f"seconds must be a number (got {seconds!r})")
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"seconds must be a finite number >= 0 (got {seconds!r})")
        checksum = item.pop("checksum")
        if checksum != self._checksum(item):
            raise ValueError(
                "its checksum does not match (edited, damaged, or copied from another checkpoint)"
            )
        return BatchRecord(**item)

    def _read_log(self) -> dict[tuple[int, int], BatchRecord]:
        records: dict[tuple[int, int], BatchRecord] = {}
        try:
            raw = self._log.read_bytes()
        except OSError as error:
            raise InputError(
                f"--checkpoint: cannot read {self._log} ({error.strerror or error}); {_FRESH}"
            ) from None
        good = 0
        for number, line in enumerate(raw.splitlines(keepends=True), start=1):
            if not line.endswith(b"\n"):
                break  # a partial last line: the run died while writing it
            try:
                record = self._parse(line)
                key = (record.stage, record.batch)
                if key in records:
                    raise ValueError(
                        f"it repeats stage {record.stage} batch {record.batch} "
                        "(did two runs share this folder?)"
                    )
            except ValueError as error:
                raise InputError(
                    f"--checkpoint: {self._log} line {number} is not a valid record: {error}; "
                    f"{_FRESH}"
                ) from None
            records[key] = record
            good += len(line)
        if good != len(raw):
            with self._log.open("r+b") as fh:
                fh.truncate(good)
                fh.flush()
                os.fsync(fh.fileno())
        return records

    def get(self, stage: int, batch: int, indices: list[int]) -> BatchRecord | None:
        """The recorded result of this batch, if any; it must cover exactly ``indices``."""
        record = self.records.get((stage, batch))
        if record is not None and record.indices != indices:
            raise InputError(
                f"--checkpoint: {self.directory} does not match this run (stage {stage}, batch "
                f"{batch} covered other samples); use a new folder"
            )
        return record

    def append(self, record: BatchRecord) -> None:
        """Append ``record`` with its checksum and force it to disk before returning."""
        fields = asdict(record)
        line = _canonical({**fields, "checksum": self._checksum(fields)}) + "\n"
        with self._log.open("ab") as fh:
            fh.write(line.encode())
            fh.flush()
            os.fsync(fh.fileno())
        self.records[(record.stage, record.batch)] = record


def _json_kind(value: object) -> str:
    kinds = {list: "list", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else kinds.get(type(value), type(value).__name__)
