"""Fingerprints: short hashes of tensors, of a model's weights and of its code.

A run folder (an audit checkpoint, a training run) records the fingerprints of what decides its
numbers, and refuses to resume when they differ.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import re
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["fingerprint_code", "fingerprint_model", "fingerprint_tensors"]


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
