"""Inspecting PyTorch archives entry by entry before any PyTorch loader sees them.

A ``torch.export`` archive (``.pt2``) is a zip of JSON, raw tensor bytes and, in places, pickles;
``torch.export.load`` unpickles weights, constants and sample inputs that ask for it, falls back to
an older layout whose entries are pickles, feeds shape expressions to ``sympy.sympify`` (``eval``),
runs the program's "guards" as Python source and resolves each node's target by ``getattr`` from
the ``torch`` module (``torch.os.system`` included). None of that is acceptable for a file a user
was merely handed. So an archive loads without ``--trust-pickle`` only when:

- every entry is one an honest single-program export holds (an allow-list), seen alike by Python's
  ``zipfile`` and by PyTorch's own zip reader, without duplicates;
- the weights and constants configs mark nothing as pickled and name only raw tensor files;
- the sample inputs load with ``torch.load(weights_only=True)`` (else PyTorch retries unrestricted);
- the program's JSON calls only ATen / prims operators and symbolic-shape operators, names its
  weights with plain dotted names, holds no guard code, and its shape expressions are arithmetic
  over shape symbols (checked on the syntax tree, so nothing reaches ``eval`` unchecked).

TorchScript archives and ``torch.save`` zips are held to allow-lists of their entries too; their
pickles are read by PyTorch's restricted unpicklers.

Every refusal is an :class:`InputError` with one line naming the file and the entry.
"""

from __future__ import annotations

import ast
import io
import json
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from mlsec.errors import InputError

__all__ = [
    "check_export_archive",
    "check_export_graph",
    "check_torch_zip",
    "check_torchscript_archive",
    "export_layout",
]

# What ``torch.export.save`` writes for one program named "model" (PyTorch 2.7 and later).
_EXPORT_ENTRIES = re.compile(
    r"archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id"
    r"|models/model\.json|data/sample_inputs/model\.pt"
    r"|data/weights/model_weights_config\.json|data/weights/weight_\d+"
    r"|data/constants/model_constants_config\.json|data/constants/tensor_\d+"
    r"|extra/[A-Za-z0-9_.-]+"
)
_TORCHSCRIPT_ENTRIES = re.compile(
    r"data\.pkl|constants\.pkl|version|\.data/version|\.data/serialization_id|byteorder"
    r"|\.format_version|\.storage_alignment|data/\d+|constants/\d+"
    r"|code/(?:[A-Za-z0-9_]+/)*[A-Za-z0-9_]+\.py(?:\.debug_pkl)?|extra/[A-Za-z0-9_.-]+"
)
_TORCH_SAVE_ENTRIES = re.compile(
    r"data\.pkl|version|\.data/version|\.data/serialization_id|byteorder"
    r"|\.format_version|\.storage_alignment|data/\d+"
)
# The older torch.export layout (PyTorch < 2.7): its top-level entries are pickles.
_LEGACY_EXPORT = frozenset(
    {"serialized_exported_program.json", "serialized_state_dict.pt", "serialized_constants.pt"}
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


def _entries(path: Path, option: str) -> tuple[str, list[str]]:
    """The archive's top folder and its entries below it, as Python's zipfile reads them."""
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        raise InputError(
            f"{option}: cannot read {_shown(path)} as a zip archive: {error}"
        ) from None
    names = [info.filename for info in infos]
    if not names:
        raise InputError(f"{option}: {_shown(path)} is an empty zip archive")
    top = names[0].partition("/")[0]
    inner = []
    for name in names:
        folder, slash, rest = name.partition("/")
        if folder != top or not slash or not rest or "\\" in name or "\x00" in name:
            raise InputError(
                f"{option}: {_shown(path)} has an entry outside its top folder "
                f"({_shown(name)}); PyTorch archives keep every entry in one folder"
            )
        inner.append(rest)
    duplicates = sorted({name for name in inner if inner.count(name) > 1})
    if duplicates:
        raise InputError(
            f"{option}: {_shown(path)} holds the entry {_shown(duplicates[0])} twice; "
            "readers disagree on which one counts, so mlsec refuses it"
        )
    return top, inner


def _shown(text: object) -> str:
    shown = str(text)
    return shown if shown.isprintable() else repr(shown)


def _torch_reader(path: Path, option: str, inner: list[str]) -> Any:
    """PyTorch's own zip reader on ``path``; it must list exactly the entries zipfile lists."""
    try:
        reader = torch._C.PyTorchFileReader(str(path))
        records = set(reader.get_all_records())
    except (RuntimeError, OSError, ValueError) as error:
        message = " ".join(str(error).split())[:200]
        raise InputError(f"{option}: cannot read {_shown(path)}: {message}") from None
    if records != set(inner):
        odd = sorted(records ^ set(inner))
        raise InputError(
            f"{option}: {_shown(path)} reads differently in PyTorch's zip reader and in "
            f"Python's (entry {_shown(odd[0])}); refusing an ambiguous archive"
        )
    return reader


def _refuse_unknown(path: Path, option: str, inner: list[str], allowed: re.Pattern[str]) -> None:
    for name in inner:
        if not allowed.fullmatch(name):
            raise InputError(
                f"{option}: {_shown(path)} holds an entry that no honest export has "
                f"({_shown(name)}); mlsec loads it only with --trust-pickle, which runs code "
                "from the file"
            )


def export_layout(path: Path) -> str | None:
    """``"pt2"`` for a torch.export archive, ``"legacy"`` for its older layout, else None."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return None
    inner = {name.partition("/")[2] for name in names} | set(names)
    if "archive_format" in inner:
        return "pt2"
    if inner & _LEGACY_EXPORT:
        return "legacy"
    return None


def check_export_archive(path: Path, option: str = "--model") -> None:
    """Refuse a ``.pt2`` archive unless ``torch.export.load`` can read it without running code.

    Raises:
        InputError: naming the first entry or field that could unpickle or run code.

    """
    shown = _shown(path)
    _, inner = _entries(path, option)
    _refuse_unknown(path, option, inner, _EXPORT_ENTRIES)
    reader = _torch_reader(path, option, inner)
    names = set(inner)
    with zipfile.ZipFile(path) as archive:
        sizes = {info.filename.partition("/")[2]: info.file_size for info in archive.infolist()}
    for required in ("models/model.json", "data/sample_inputs/model.pt"):
        if required not in names:
            raise InputError(
                f"{option}: cannot read {shown} as a torch.export program: it holds no "
                f"{required} (save one program with torch.export.save)"
            )

    def read(name: str) -> bytes:
        data: bytes = reader.get_record(name)
        return data

    def read_json(name: str) -> Any:
        if sizes[name] > _MAX_JSON:
            raise InputError(f"{option}: {shown}: {name} is larger than mlsec reads")
        try:
            return json.loads(read(name))
        except (ValueError, UnicodeDecodeError) as error:
            raise InputError(f"{option}: {shown}: {name} is not valid JSON ({error})") from None

    for kind, prefix in (("weights", "weight_"), ("constants", "tensor_")):
        config_name = f"data/{kind}/model_{kind}_config.json"
        if config_name not in names:
            raise InputError(
                f"{option}: cannot read {shown} as a torch.export program: it holds no "
                f"{config_name} (an older PyTorch wrote it? re-save with torch.export.save)"
            )
        _check_payload_config(read_json(config_name), kind, prefix, names, shown, option)
    try:
        sample = torch.load(io.BytesIO(read("data/sample_inputs/model.pt")), weights_only=True)
    except Exception:  # anything weights_only refuses makes PyTorch retry unrestricted
        raise InputError(
            f"{option}: {shown} holds sample inputs that need unpickling "
            "(data/sample_inputs/model.pt); loading it would run code from the file; "
            "pass --trust-pickle only if you trust its source"
        ) from None
    if not isinstance(sample, tuple | dict):
        raise InputError(f"{option}: {shown}: data/sample_inputs/model.pt is not a tuple")
    _check_program_json(read_json("models/model.json"), shown, option)


def _check_payload_config(
    config: Any, kind: str, prefix: str, names: set[str], shown: str, option: str
) -> None:
    where = f"{option}: {shown}: data/{kind}/model_{kind}_config.json"
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise InputError(f"{where} has no 'config' object")
    for fqn, entry in entries.items():
        if not isinstance(entry, dict):
            raise InputError(f"{where}: the entry for {_shown(fqn)} is not an object")
        path_name = entry.get("path_name")
        if entry.get("use_pickle") is not False or not (
            isinstance(path_name, str) and re.fullmatch(prefix + r"\d+", path_name)
        ):
            raise InputError(
                f"{option}: {shown} holds a pickled {kind[:-1]} ({_shown(fqn)}): loading it "
                "would run code from the file; pass --trust-pickle only if you trust its source"
            )
        if f"data/{kind}/{path_name}" not in names:
            raise InputError(f"{where}: {_shown(fqn)} names data/{kind}/{path_name}, not in it")
        if not isinstance(entry.get("tensor_meta"), dict) or not _FQN.fullmatch(str(fqn)):
            raise InputError(f"{where}: the entry for {_shown(fqn)} is malformed")


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


def _check_program_json(program: Any, shown: str, option: str) -> None:
    """The program's graph calls only known operators and carries no code."""
    if not isinstance(program, dict) or not isinstance(program.get("graph_module"), dict):
        raise InputError(f"{option}: {shown}: models/model.json is not an exported program")
    refuse = (
        f"{option}: {shown} holds a program that %s; mlsec loads it only with --trust-pickle, "
        "which runs code from the file"
    )
    if program.get("guards_code"):
        raise InputError(refuse % "carries guard code (Python source that PyTorch executes)")
    for key, value in _walk(program):
        if key == "target" and isinstance(value, str) and not _TARGET.fullmatch(value):
            raise InputError(refuse % f"calls {_shown(value[:80])}, not an ATen operator")
        if key == "expr_str" and isinstance(value, str) and not _safe_shape_expression(value):
            raise InputError(refuse % f"has a shape expression that is code ({_shown(value[:80])})")
    for _, value in _walk(program["graph_module"].get("signature", {})):
        if isinstance(value, str) and not _NAME.fullmatch(value):
            raise InputError(refuse % f"names a weight {_shown(value[:80])}")


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


def check_export_graph(module: torch.nn.Module, shown: str, option: str = "--model") -> None:
    """After loading: every call in the program's graph is an ATen or prims operator."""
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
                f"{option}: {shown} holds a program that calls {_shown(node.target)}, not an "
                "ATen operator; mlsec loads it only with --trust-pickle"
            )


def _aten(op: torch._ops.OpOverload) -> bool:
    return op.namespace in ("aten", "prims")


def _qualified(target: Any) -> str:
    if isinstance(target, torch._ops.OpOverload):
        name = target._schema.name.split("::")[-1]
        return f"torch.ops.{target.namespace}.{name}.{target._overloadname}"
    module = getattr(target, "__module__", "") or ""
    return f"{module}.{getattr(target, '__name__', '')}"


def check_torchscript_archive(path: Path, option: str = "--model") -> None:
    """Refuse a TorchScript archive with entries that ``torch.jit.save`` does not write."""
    _, inner = _entries(path, option)
    _refuse_unknown(path, option, inner, _TORCHSCRIPT_ENTRIES)
    _torch_reader(path, option, inner)


def check_torch_zip(path: Path, option: str = "--model") -> None:
    """Refuse a ``torch.save`` zip with entries that ``torch.save`` does not write."""
    _, inner = _entries(path, option)
    _refuse_unknown(path, option, inner, _TORCH_SAVE_ENTRIES)
    _torch_reader(path, option, inner)
