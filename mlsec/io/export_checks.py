"""Inspecting a ``torch.export`` archive (``.pt2``) before ``torch.export.load`` sees it.

A ``torch.export`` archive is a zip of JSON, raw tensor bytes and, in places, pickles;
``torch.export.load`` unpickles weights, constants and sample inputs that ask for it, falls back to
an older layout whose entries are pickles, feeds shape expressions to ``sympy.sympify`` (``eval``),
runs the program's "guards" as Python source and resolves each node's target by ``getattr`` from
the ``torch`` module (``torch.os.system`` included). None of that is acceptable for a file a user
was merely handed. So an archive loads without ``trust_pickle`` (``--trust-pickle``) only when:

- every entry is one an honest single-program export holds (an allow-list), seen alike by Python's
  ``zipfile`` and by PyTorch's own zip reader, without duplicates;
- the weights and constants configs mark nothing as pickled and name only raw tensor files;
- the sample inputs load with ``torch.load(weights_only=True)`` (else PyTorch retries unrestricted);
- the program's JSON calls only ATen / prims operators and symbolic-shape operators, names its
  weights with plain dotted names, holds no guard code, and its shape expressions are arithmetic
  over shape symbols (checked on the syntax tree, so nothing reaches ``eval`` unchecked).

Every refusal is an :class:`InputError` with one line naming the file and the entry; its
``subject`` is the caller's name for the input (``"model"`` by default).
"""

from __future__ import annotations

import ast
import io
import json
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mlsec.errors import InputError
from mlsec.io.archives import archive_entries, refuse_unknown, torch_reader
from mlsec.io.messages import LIBRARY_TERMS, Terms, shown

__all__ = ["check_export_archive", "check_export_graph"]

# What ``torch.export.save`` writes for one program named "model" (PyTorch 2.7 and later).
_EXPORT_ENTRIES = re.compile(
    r"archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id"
    r"|models/model\.json|data/sample_inputs/model\.pt"
    r"|data/weights/model_weights_config\.json|data/weights/weight_\d+"
    r"|data/constants/model_constants_config\.json|data/constants/tensor_\d+"
    r"|extra/[A-Za-z0-9_.-]+"
)
# A weight's name as the unlifted module's generated code uses it.
_FQN = re.compile(r"[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)*")
_NAME = re.compile(r"[A-Za-z0-9_.]*")
_TARGET = re.compile(
    r"torch\.ops\.(?:aten|prims)\.[A-Za-z0-9_]+\.[A-Za-z0-9_]+"
    r"|_operator\.(?:getitem|add|sub|mul|floordiv|truediv|mod|pow|neg|pos|eq|ne|lt|le|gt|ge"
    r"|and_|or_|lshift|rshift)"
    r"|torch\.sym_(?:int|float|not|ite|max|min|sqrt)|math\.trunc"
)
# Functions a shape expression may call (sympy's and PyTorch's symbolic-shape functions).
_SHAPE_CALLS = frozenset(
    {
        "Symbol", "Integer", "Rational", "Float", "Max", "Min", "Abs", "Mod", "Eq", "Ne", "Lt",
        "Le", "Gt", "Ge", "And", "Or", "Not", "FloorDiv", "CeilDiv", "ModularIndexing", "Where",
        "PythonMod", "CleanDiv", "CeilToInt", "FloorToInt", "LShift", "RShift", "PowByNatural",
        "FloatPow", "FloatTrueDiv", "IntTrueDiv", "IsNonOverlappingAndDenseIndicator",
        "TruncToFloat", "TruncToInt", "RoundToInt", "RoundDecimal", "ToFloat", "Identity",
    }
)  # fmt: skip
_SHAPE_CONSTANTS = frozenset({"oo", "zoo", "nan", "true", "false", "True", "False"})
_SHAPE_SYMBOL = re.compile(r"[a-z]{1,4}\d{1,9}")
_SHAPE_NODES = (
    ast.Expression, ast.BinOp, ast.UnaryOp, ast.Compare, ast.BoolOp, ast.Call, ast.Constant,
    ast.Name, ast.keyword, ast.Load, ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod,
    ast.Pow, ast.USub, ast.UAdd, ast.Not, ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE,
    ast.And, ast.Or,
)  # fmt: skip
_MAX_JSON = 256 * 2**20


def check_export_archive(path: Path, subject: str = "model", terms: Terms = LIBRARY_TERMS) -> None:
    """Refuse a ``.pt2`` archive unless ``torch.export.load`` can read it without running code.

    Args:
        path: the archive.
        subject: the input's name in the caller's terms, the subject of every error.
        terms: how messages name the caller's other inputs (``trust_pickle``).

    Raises:
        InputError: naming the first entry or field that could unpickle or run code.

    """
    where = shown(path)
    _, inner = archive_entries(path, subject)
    refuse_unknown(path, inner, _EXPORT_ENTRIES, subject, terms)
    reader = torch_reader(path, subject, inner)
    names = set(inner)
    with zipfile.ZipFile(path) as archive:
        sizes = {info.filename.partition("/")[2]: info.file_size for info in archive.infolist()}
    for required in ("models/model.json", "data/sample_inputs/model.pt"):
        if required not in names:
            raise InputError(
                f"cannot read {where} as a torch.export program: it holds no "
                f"{required} (save one program with torch.export.save)",
                subject=subject,
            )

    def read(name: str) -> bytes:
        data: bytes = reader.get_record(name)
        return data

    def read_json(name: str) -> Any:
        if sizes[name] > _MAX_JSON:
            raise InputError(f"{where}: {name} is larger than mlsec reads", subject=subject)
        try:
            return json.loads(read(name))
        except (ValueError, UnicodeDecodeError) as error:
            raise InputError(
                f"{where}: {name} is not valid JSON ({error})", subject=subject
            ) from None

    for kind, prefix in (("weights", "weight_"), ("constants", "tensor_")):
        config_name = f"data/{kind}/model_{kind}_config.json"
        if config_name not in names:
            raise InputError(
                f"cannot read {where} as a torch.export program: it holds no "
                f"{config_name} (an older PyTorch wrote it? re-save with torch.export.save)",
                subject=subject,
            )
        config = read_json(config_name)
        _check_payload_config(config, _Payload(kind, prefix, names, where, subject, terms))
    _check_sample_inputs(read("data/sample_inputs/model.pt"), where, subject, terms)
    _check_program_json(read_json("models/model.json"), where, subject, terms)


def _check_sample_inputs(blob: bytes, where: str, subject: str, terms: Terms) -> None:
    try:
        sample = torch.load(io.BytesIO(blob), weights_only=True)
    except Exception:  # anything weights_only refuses makes PyTorch retry unrestricted
        raise InputError(
            f"{where} holds sample inputs that need unpickling "
            "(data/sample_inputs/model.pt); loading it would run code from the file; "
            f"pass {terms.trust_pickle} only if you trust its source",
            subject=subject,
        ) from None
    if not isinstance(sample, tuple | dict):
        raise InputError(f"{where}: data/sample_inputs/model.pt is not a tuple", subject=subject)


@dataclass(frozen=True)
class _Payload:
    """One payload config of an export archive (weights or constants) and how to name it."""

    kind: str
    prefix: str
    names: set[str]
    where: str
    subject: str
    terms: Terms


def _check_payload_config(config: Any, payload: _Payload) -> None:
    kind, subject = payload.kind, payload.subject
    at = f"{payload.where}: data/{kind}/model_{kind}_config.json"
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise InputError(f"{at} has no 'config' object", subject=subject)
    for fqn, entry in entries.items():
        if not isinstance(entry, dict):
            raise InputError(f"{at}: the entry for {shown(fqn)} is not an object", subject=subject)
        path_name = entry.get("path_name")
        if entry.get("use_pickle") is not False or not (
            isinstance(path_name, str) and re.fullmatch(payload.prefix + r"\d+", path_name)
        ):
            raise InputError(
                f"{payload.where} holds a pickled {kind[:-1]} ({shown(fqn)}): loading it "
                f"would run code from the file; pass {payload.terms.trust_pickle} only if you "
                "trust its source",
                subject=subject,
            )
        if f"data/{kind}/{path_name}" not in payload.names:
            raise InputError(
                f"{at}: {shown(fqn)} names data/{kind}/{path_name}, not in it", subject=subject
            )
        if not isinstance(entry.get("tensor_meta"), dict) or not _FQN.fullmatch(str(fqn)):
            raise InputError(f"{at}: the entry for {shown(fqn)} is malformed", subject=subject)


def _walk(value: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    """Every (key, value) pair under ``value``, depth first; list items carry their list's key."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield str(k), v
            yield from _walk(v, str(k))
    elif isinstance(value, list):
        for item in value:
            yield key, item
            yield from _walk(item, key)


def _check_program_json(program: Any, where: str, subject: str, terms: Terms) -> None:
    """The program's graph calls only known operators and carries no code."""
    if not isinstance(program, dict) or not isinstance(program.get("graph_module"), dict):
        raise InputError(f"{where}: models/model.json is not an exported program", subject=subject)

    def refuse(what: str) -> InputError:
        return InputError(
            f"{where} holds a program that {what}; mlsec loads it only with "
            f"{terms.trust_pickle}, which runs code from the file",
            subject=subject,
        )

    if program.get("guards_code"):
        raise refuse("carries guard code (Python source that PyTorch executes)")
    for key, value in _walk(program):
        if key == "target" and isinstance(value, str) and not _TARGET.fullmatch(value):
            raise refuse(f"calls {shown(value[:80])}, not an ATen operator")
        if key == "expr_str" and isinstance(value, str) and not _safe_shape_expression(value):
            raise refuse(f"has a shape expression that is code ({shown(value[:80])})")
    for _, value in _walk(program["graph_module"].get("signature", {})):
        if isinstance(value, str) and not _NAME.fullmatch(value):
            raise refuse(f"names a weight {shown(value[:80])}")


def _safe_shape_expression(text: str) -> bool:
    """Whether ``text`` is arithmetic over shape symbols, safe for ``sympy.sympify``."""
    if len(text) > 2000:
        return False
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError):
        return False
    for node in ast.walk(tree):
        if not isinstance(node, _SHAPE_NODES):
            return False
        if isinstance(node, ast.Name) and not (
            node.id in _SHAPE_CALLS
            or node.id in _SHAPE_CONSTANTS
            or _SHAPE_SYMBOL.fullmatch(node.id)
        ):
            return False
        if isinstance(node, ast.Call) and not (
            isinstance(node.func, ast.Name) and node.func.id in _SHAPE_CALLS
        ):
            return False
        if isinstance(node, ast.keyword) and (node.arg is None or node.arg.startswith("_")):
            return False
        if isinstance(node, ast.Constant):
            value = node.value
            if isinstance(value, str) and not _SHAPE_SYMBOL.fullmatch(value):
                return False
            if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**63:
                return False
            if not isinstance(value, str | int | float | bool) and value is not None:
                return False
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
            exponent = node.right
            if not (isinstance(exponent, ast.Constant) and isinstance(exponent.value, int)):
                return False
            if not 0 <= exponent.value <= 64:
                return False
    return True


def check_export_graph(
    module: torch.nn.Module, where: str, subject: str = "model", terms: Terms = LIBRARY_TERMS
) -> None:
    """After loading: every call in the program's graph is an ATen or prims operator.

    Args:
        module: the loaded program's module.
        where: the file, as messages show it.
        subject: the input's name in the caller's terms, the subject of the error.
        terms: how messages name the caller's other inputs (``trust_pickle``).

    """
    graph = getattr(module, "graph", None)
    if graph is None:
        return
    for node in graph.nodes:
        # _guards_fn: PyTorch's input checks, made from the guard code (refused unless empty).
        if (node.op == "call_module" and node.target != "_guards_fn") or (
            node.op == "call_function"
            and not _TARGET.fullmatch(_qualified(node.target))
            and not (isinstance(node.target, torch._ops.OpOverload) and _aten(node.target))
        ):
            raise InputError(
                f"{where} holds a program that calls {shown(node.target)}, not an "
                f"ATen operator; mlsec loads it only with {terms.trust_pickle}",
                subject=subject,
            )


def _aten(op: torch._ops.OpOverload) -> bool:
    return op.namespace in ("aten", "prims")


def _qualified(target: Any) -> str:
    if isinstance(target, torch._ops.OpOverload):
        name = target._schema.name.split("::")[-1]
        return f"torch.ops.{target.namespace}.{name}.{target._overloadname}"
    module = getattr(target, "__module__", "") or ""
    return f"{module}.{getattr(target, '__name__', '')}"
