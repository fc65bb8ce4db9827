"""Audit suites: which attacks run, with which parameters, over which eps grid.

A suite is a chain of attacks. Built-in suites are named (``default``, ``quick``, ``standard``,
``thorough``); others come from a TOML file::

    name = "release-gate"      # optional
    norm = "linf"              # default for every attack
    eps = [0.1, 0.2, 0.3]      # default grid for every attack
    seed = 0                   # default seed

    [[attack]]
    name = "fgsm"

    [[attack]]
    name = "pgd"
    steps = 100
    restarts = 5
    eps = [0.3]                # this attack's own grid (optional)
    label = "pgd-100x5"        # name in the report (optional; default: the attack's name)

Errors name the file and line. :meth:`Suite.to_toml` writes the fully resolved suite back in the
same format, so a report's configuration can be rerun as it is.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from mlsec.attacks import Attack, create, get
from mlsec.attacks.registry import open_params

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib
from mlsec.errors import InputError

__all__ = ["BUILTIN_SUITES", "DEFAULT_EPS", "Suite", "SuiteEntry", "load_suite", "parse_eps"]

DEFAULT_EPS = (0.1, 0.2, 0.3)
_TOP_KEYS = {"name", "norm", "eps", "seed", "attack"}


def parse_eps(text: str) -> list[float]:
    """Parse a comma-separated eps list; fractions such as ``8/255`` are allowed."""
    values = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            values.append(float(Fraction(part)) if "/" in part else float(part))
        except (ValueError, ZeroDivisionError):
            raise InputError(
                f"{part!r} is not a number (use e.g. 0.3 or 8/255)", subject="eps"
            ) from None
    if not values:
        raise InputError("give at least one value", subject="eps")
    return values


@dataclass(frozen=True, kw_only=True)
class SuiteEntry:
    """One attack of the chain: the configured attack (its eps is replaced), label and grid."""

    label: str
    attack: Attack
    eps: tuple[float, ...]


@dataclass(frozen=True, kw_only=True)
class Suite:
    """A chain of attacks, run in order on the samples earlier ones left standing."""

    name: str
    entries: tuple[SuiteEntry, ...]

    def __post_init__(self) -> None:
        if not self.entries:
            raise InputError(f"suite {self.name!r} has no attacks")
        labels = [entry.label for entry in self.entries]
        duplicates = sorted({label for label in labels if labels.count(label) > 1})
        if duplicates:
            raise InputError(
                f"suite {self.name!r}: attack labels must be distinct (repeated: "
                f'{", ".join(duplicates)}); set label = "..." on each'
            )
        if "worst" in labels:
            raise InputError("'worst' is reserved for the worst case; choose another label")
        bounds = {entry.attack.bounds for entry in self.entries}
        if len(bounds) != 1:
            raise InputError(f"suite {self.name!r}: all attacks need the same bounds")
        for entry in self.entries:
            if not entry.eps:
                raise InputError(f"give at least one eps value (attack {entry.label!r})")
            if len(set(entry.eps)) != len(entry.eps):
                raise InputError(f"eps values must be distinct (got {list(entry.eps)})")
            for value in entry.eps:
                dataclasses.replace(entry.attack, eps=value)  # validates the eps

    @classmethod
    def from_attacks(
        cls, attacks: Sequence[Attack | str], eps: Sequence[float] = DEFAULT_EPS
    ) -> Suite:
        """A suite chaining ``attacks`` (objects or registered names) over one grid.

        An attack named twice is labelled ``name-1``, ``name-2``.
        """
        objects = [create(a, eps=0.0) if isinstance(a, str) else a for a in attacks]
        if not objects:
            raise InputError("give at least one attack")
        names = [a.name for a in objects]
        labels = [
            n if names.count(n) == 1 else f"{n}-{names[: i + 1].count(n)}"
            for i, n in enumerate(names)
        ]
        grid = tuple(sorted(float(e) for e in eps))
        return cls(
            name="custom",
            entries=tuple(
                SuiteEntry(label=label, attack=attack, eps=grid)
                for label, attack in zip(labels, objects, strict=True)
            ),
        )

    @property
    def eps(self) -> list[float]:
        """The union of every attack's grid, ascending."""
        return sorted({value for entry in self.entries for value in entry.eps})

    @property
    def bounds(self) -> tuple[float, float]:
        """The input bounds every attack shares."""
        return self.entries[0].attack.bounds

    @property
    def norm(self) -> str:
        """The attacks' norm, or ``"mixed"``."""
        norms = {entry.attack.norm for entry in self.entries}
        return norms.pop() if len(norms) == 1 else "mixed"

    def at(self, eps: float) -> list[SuiteEntry]:
        """The entries whose grid holds ``eps``, in chain order."""
        return [e for e in self.entries if any(math.isclose(eps, v) for v in e.eps)]

    def with_overrides(
        self,
        *,
        eps: Sequence[float] | None = None,
        norm: str | None = None,
        bounds: tuple[float, float] | None = None,
        seed: int | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> Suite:
        """A copy with a new grid, norm, bounds or seed, or new parameters.

        ``params`` (such as ``{"steps": 10}``) reach every attack that has such a parameter.
        """
        entries = []
        for entry in self.entries:
            fields = {f.name for f in dataclasses.fields(entry.attack)}
            changes: dict[str, Any] = {
                k: v for k, v in (params or {}).items() if k in fields and v is not None
            }
            for key, value in (("norm", norm), ("bounds", bounds), ("seed", seed)):
                if value is not None:
                    changes[key] = value
            if "bounds" in changes:
                changes["bounds"] = tuple(changes["bounds"])
            attack = dataclasses.replace(entry.attack, **changes) if changes else entry.attack
            grid = tuple(sorted(float(v) for v in eps)) if eps is not None else entry.eps
            entries.append(SuiteEntry(label=entry.label, attack=attack, eps=grid))
        return Suite(name=self.name, entries=tuple(entries))

    def to_config(self) -> dict[str, Any]:
        """The resolved suite as plain data (for reports and checkpoints)."""
        return {
            "name": self.name,
            "attack": [
                {"label": e.label, "name": e.attack.name, **_params(e.attack), "eps": list(e.eps)}
                for e in self.entries
            ],
        }

    def to_toml(self) -> str:
        """The resolved suite as a TOML file that :func:`load_suite` reads back unchanged."""
        lines = [f"name = {_toml(self.name)}", ""]
        for entry in self.entries:
            lines.append("[[attack]]")
            lines.append(f"name = {_toml(entry.attack.name)}")
            lines.append(f"label = {_toml(entry.label)}")
            for key, value in _params(entry.attack).items():
                if value is not None:
                    lines.append(f"{key} = {_toml(value)}")
            lines.append(f"eps = {_toml(list(entry.eps))}")
            lines.append("")
        return "\n".join(lines)


def _params(attack: Attack) -> dict[str, Any]:
    """The attack's parameters but eps, in JSON's types (tuples as lists)."""
    params = attack.params()
    params.pop("eps")
    return {k: list(v) if isinstance(v, tuple) else v for k, v in params.items()}


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):  # an inner attack's settings (EOT): an inline table
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items() if v is not None) + "}"
    raise TypeError(f"cannot write {value!r} as TOML")


def _build(name: str, params: Mapping[str, Any], *, where: str) -> Attack:
    values = {k: tuple(v) if k == "bounds" else v for k, v in params.items()}
    try:
        return create(name, eps=0.0, **{k: v for k, v in values.items() if k != "eps"})
    except InputError as error:
        raise InputError(f"{where}{error}") from None


def _builtin(name: str, chain: Sequence[tuple[str, dict[str, Any]]]) -> Suite:
    entries = tuple(
        SuiteEntry(label=attack, attack=_build(attack, params, where=""), eps=DEFAULT_EPS)
        for attack, params in chain
    )
    return Suite(name=name, entries=entries)


BUILTIN_SUITES: dict[str, Suite] = {
    "default": _builtin("default", [("fgsm", {}), ("pgd", {"steps": 40})]),
    "quick": _builtin("quick", [("fgsm", {}), ("pgd", {"steps": 20})]),
    # AutoAttack's standard version: APGD-CE, APGD-T against 9 classes, Square with 5,000 queries.
    "standard": _builtin(
        "standard",
        [
            ("apgd", {"steps": 100}),
            ("apgd-t", {"steps": 100, "targets": 9}),
            ("square", {"queries": 5000}),
        ],
    ),
    # The standard chain with restarts, plus APGD on the DLR loss (AutoAttack's "plus" version,
    # without FAB).
    "thorough": _builtin(
        "thorough",
        [
            ("apgd", {"steps": 100, "restarts": 5}),
            ("apgd-dlr", {"steps": 100, "restarts": 5}),
            ("apgd-t", {"steps": 100, "targets": 9}),
            ("square", {"queries": 5000, "restarts": 5}),
        ],
    ),
}


def _line_of(text: str, pattern: str, start: int = 0, end: int | None = None) -> int | None:
    lines = text.splitlines()
    for number in range(start, len(lines) if end is None else end):
        if re.match(pattern, lines[number]):
            return number + 1
    return None


def load_suite(spec: str | Path) -> Suite:
    """A built-in suite by name, or a suite read from a TOML file."""
    if isinstance(spec, str) and spec in BUILTIN_SUITES:
        return BUILTIN_SUITES[spec]
    path = Path(spec)
    if not path.is_file():
        raise InputError(
            f"{spec!s} is neither a built-in suite ({', '.join(BUILTIN_SUITES)}) nor a file",
            subject="suite",
        )
    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text)
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"cannot read {path}: {error}", subject="suite") from None
    except tomllib.TOMLDecodeError as error:
        raise InputError(f"{path}: not valid TOML: {error}") from None
    return _parse(data, text, str(path))


def _parse(data: dict[str, Any], text: str, source: str) -> Suite:
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        line = _line_of(text, rf"\s*{re.escape(unknown[0])}\s*=") or 1
        raise InputError(
            f"{source} line {line}: unknown key {unknown[0]!r}; "
            f"top-level keys: {', '.join(sorted(_TOP_KEYS))}"
        )
    headers = [
        i for i, line in enumerate(text.splitlines()) if re.match(r"\s*\[\[\s*attack\s*\]\]", line)
    ]
    tables = data.get("attack")
    if not isinstance(tables, list) or not tables:
        raise InputError(f"{source}: no attacks; add [[attack]] tables with a name each")
    defaults = {k: data[k] for k in ("norm", "seed") if k in data}
    grid = data.get("eps", list(DEFAULT_EPS))
    entries = []
    for index, table in enumerate(tables):
        first = headers[index] if index < len(headers) else 0
        last = headers[index + 1] if index + 1 < len(headers) else None
        where = f"{source} line {first + 1}: "

        def line_for(key: str, first: int = first, last: int | None = last) -> str:
            number = _line_of(text, rf"\s*{re.escape(key)}\s*=", first, last)
            return f"{source} line {number or first + 1}: "

        if "name" not in table:
            raise InputError(f'{where}[[attack]] needs name = "..." (see mlsec attacks)')
        name = table["name"]
        try:
            cls = get(str(name))
        except InputError as error:
            raise InputError(f"{line_for('name')}{error}") from None
        known = {f.name for f in dataclasses.fields(cls)} - {"eps"}
        params = {k: v for k, v in table.items() if k not in ("name", "label", "eps")}
        for key in params:
            if key not in known and not open_params(cls):
                raise InputError(
                    f"{line_for(key)}attack {name!r} has no parameter {key!r}; "
                    f"its parameters: {', '.join(sorted(known))}"
                )
        eps = table.get("eps", grid)
        if not isinstance(eps, list) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in eps
        ):
            raise InputError(f"{line_for('eps')}eps must be a list of numbers (got {eps!r})")
        merged = {**{k: v for k, v in defaults.items() if k in known}, **params}
        try:
            attack = _build(cls.name, merged, where="")
            for value in eps:
                dataclasses.replace(attack, eps=float(value))
        except InputError as error:
            keys = [*params, "eps"]
            # The key the message quotes, else any it mentions (an open attack lists its own).
            key = next((k for k in keys if repr(k) in str(error)), None) or next(
                (k for k in keys if k in str(error)), "name"
            )
            raise InputError(f"{line_for(key)}{error}") from None
        label = table.get("label", cls.name)
        if not isinstance(label, str) or not label:
            raise InputError(f"{line_for('label')}label must be a non-empty string")
        entries.append(SuiteEntry(label=label, attack=attack, eps=tuple(sorted(map(float, eps)))))
    name = data.get("name", Path(source).stem)
    try:
        return Suite(name=str(name), entries=tuple(entries))
    except InputError as error:
        raise InputError(f"{source}: {error}") from None
