"""Importing the user's own code: ``module:function`` entry points for models, networks and data.

The module is an installed one or one in the current folder; the current folder never shadows an
installed package, and it is on ``sys.path`` only while the user's module imports and runs.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType
from typing import Any

from torch import nn

from mlsec.core.model import check_materialized
from mlsec.core.text import raised_by
from mlsec.errors import InputError
from mlsec.io.messages import shown

__all__ = ["cwd_importable", "load_entry_point", "looks_like_path", "module_from"]


def looks_like_path(spec: str, suffixes: frozenset[str]) -> bool:
    """Whether ``spec`` names a file (a folder in it, or a known suffix) rather than a name.

    Example:
        >>> looks_like_path("cnn.pt", frozenset({".pt"})), looks_like_path("mnist-cnn", frozenset())
        (True, False)

    """
    return "/" in spec or os.sep in spec or Path(spec).suffix.lower() in suffixes


@contextmanager
def cwd_importable(enabled: bool = True) -> Iterator[None]:
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


def _import_user_module(module_name: str, subject: str) -> ModuleType:
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
                f"module {top!r} is both in the current folder ({shown(local.origin)}) "
                f"and installed ({shown(installed.origin)}); rename your file or run mlsec from "
                "another folder",
                subject=subject,
            )
    with cwd_importable(local is not None):
        return importlib.import_module(module_name)


def _from_cwd(module: ModuleType) -> bool:
    origin = getattr(module, "__file__", None)
    return origin is not None and Path(origin).resolve().is_relative_to(Path.cwd().resolve())


def load_entry_point(spec: str, subject: str = "entry point") -> Any:
    """Import ``module:attribute`` and return the attribute, called if it is a function.

    Args:
        spec: ``module:attribute``; the attribute may be dotted (``module:Class.factory``).
        subject: the input's name in the caller's terms (``"model"``, ``"arch"``, ``"data"``),
            the subject of every :class:`InputError` raised here.

    Raises:
        InputError: ``spec`` is malformed, or importing, finding or calling it failed (a
            ``sys.exit`` in the user's code included).

    Example:
        >>> load_entry_point("mlsec.zoo.architectures:mnist_softmax", "arch").training
        True

    """
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise InputError(f"must look like module:function (got {spec!r})", subject=subject)
    try:
        module = _import_user_module(module_name, subject)
    except InputError:
        raise
    except (Exception, SystemExit) as error:  # the user's module may fail in any way on import
        raise InputError(
            f"cannot import module {module_name!r} ({raised_by(error)})", subject=subject
        ) from None
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise InputError(
                f"module {module_name!r} has no attribute {attribute!r}", subject=subject
            )
        target = getattr(target, part)
    if isinstance(target, nn.Module) or not callable(target):
        return target
    try:
        with cwd_importable(_from_cwd(module)):
            return target()
    except (Exception, SystemExit) as error:  # user code: report it in one line
        raise InputError(f"{spec}() raised {raised_by(error)}", subject=subject) from None


def module_from(spec: str, subject: str) -> nn.Module:
    """The ``nn.Module`` that the entry point ``spec`` returns, with real (not meta) weights."""
    model = load_entry_point(spec, subject)
    if not isinstance(model, nn.Module):
        raise InputError(
            f"{spec} must return a torch.nn.Module (got {type(model).__name__})", subject=subject
        )
    try:
        check_materialized(model)
    except InputError as error:
        raise InputError(f"{spec}: {error.detail}", subject=subject) from None
    return model
