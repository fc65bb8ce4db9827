"""The audit's plan: the suite, its eps grid and thresholds, resolved and validated once.

Everything the runner needs before the first forward pass comes from here: which attack runs at
which eps in which order (each attack built once with its eps), the CI thresholds checked against
that chain, the batch size, and one line saying when the evaluation is weaker than the
``standard`` suite.

**Weaker than standard**, precisely: the ``standard`` suite is AutoAttack's standard version:
APGD on the cross-entropy (``apgd``) with 100 steps, a second APGD on a margin loss (``apgd-t``
or ``apgd-dlr``) with 100 steps, and the black-box Square attack (``square``) with 5,000 queries.
A chain is weaker when it lacks one of the three, or runs it with fewer steps or queries. Such an
audit gives an upper bound that a stronger attack may still lower (``mnist-cnn-pgd`` keeps 89.0%
at eps 0.3 under the default suite, about 84% under ``standard``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mlsec.attacks import Attack
from mlsec.auditing.suite import DEFAULT_EPS, Suite, SuiteEntry, load_suite
from mlsec.auditing.thresholds import Threshold, check_against
from mlsec.core.threat import Norm
from mlsec.errors import InputError

__all__ = ["Plan", "PlannedAttack", "make_plan", "resolve_suite", "strength_note"]

# The standard suite's parts: (what the note calls it, attack names that count, the field that
# measures the effort, the standard's value of it).
STANDARD_PARTS: tuple[tuple[str, frozenset[str], str, int], ...] = (
    ("APGD-CE", frozenset({"apgd"}), "steps", 100),
    ("APGD-T or APGD-DLR", frozenset({"apgd-t", "apgd-dlr"}), "steps", 100),
    ("Square", frozenset({"square"}), "queries", 5000),
)
STANDARD_COMMAND = 'mlsec audit ... --suite standard (suite="standard" in Python)'


@dataclass(frozen=True, kw_only=True)
class PlannedAttack:
    """One stage of the chain: an entry of the suite with its eps filled in."""

    label: str
    eps: float
    attack: Attack


@dataclass(frozen=True, kw_only=True)
class Plan:
    """What an audit will run, validated: the chain's stages in order, thresholds, batch size."""

    suite: Suite
    stages: tuple[PlannedAttack, ...]
    thresholds: tuple[Threshold, ...]
    batch_size: int
    survivors: bool
    strength_note: str | None

    @property
    def eps(self) -> list[float]:
        """The eps grid, ascending."""
        return self.suite.eps

    def at(self, eps: float) -> list[PlannedAttack]:
        """The stages at ``eps``, in chain order."""
        return [stage for stage in self.stages if stage.eps == eps]

    def config(self, *, sanity_checks: bool, **extra: Any) -> dict[str, Any]:
        """The report's ``config``: the resolved suite and settings, then ``extra``."""
        return {
            "suite": self.suite.to_config(),
            "batch_size": self.batch_size,
            "survivors": self.survivors,
            "sanity_checks": sanity_checks,
            "thresholds": [t.spec for t in self.thresholds],
            **extra,
        }


def resolve_suite(
    suite: Suite | str | Path | None,
    attacks: Sequence[Attack | str] | None,
    eps: Sequence[float] | None,
    norm: Norm | None,
    bounds: tuple[float, float] | None,
) -> Suite:
    """The suite that ``suite=`` or ``attacks=`` name, with the overrides applied."""
    if suite is not None and attacks is not None:
        raise InputError("give either suite= or attacks=, not both")
    if attacks is not None:
        resolved = Suite.from_attacks(attacks, DEFAULT_EPS if eps is None else eps)
        eps = None  # already the grid
    elif isinstance(suite, Suite):
        resolved = suite
    else:
        resolved = load_suite(suite if suite is not None else "default")
    if eps is None and norm is None and bounds is None:
        return resolved
    return resolved.with_overrides(eps=eps, norm=norm, bounds=bounds)


def make_plan(
    suite: Suite,
    *,
    thresholds: Sequence[Threshold] = (),
    batch_size: int = 500,
    survivors: bool = True,
    certified: bool = False,
) -> Plan:
    """Validate the settings once and lay out the chain: eps ascending, attacks in suite order.

    ``certified``: the audit certifies too, so thresholds may name the ``certified`` row.
    """
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise InputError(f"batch size must be >= 1 (got {batch_size!r})", subject="batch_size")
    check_against(thresholds, suite, rows=("worst", "certified") if certified else ("worst",))
    stages = tuple(
        PlannedAttack(label=entry.label, eps=value, attack=_at(entry, value))
        for value in suite.eps
        for entry in suite.at(value)
    )
    return Plan(
        suite=suite,
        stages=stages,
        thresholds=tuple(thresholds),
        batch_size=batch_size,
        survivors=survivors,
        strength_note=strength_note([entry.attack for entry in suite.entries]),
    )


def _at(entry: SuiteEntry, eps: float) -> Attack:
    return entry.attack if entry.attack.eps == eps else replace(entry.attack, eps=eps)


def strength_note(attacks: Sequence[Attack], *, command: str = STANDARD_COMMAND) -> str | None:
    """One line when ``attacks`` are weaker than the ``standard`` suite (see the module); else None.

    Example:
        >>> from mlsec.attacks import FGSM, PGD
        >>> strength_note([FGSM(eps=0.3), PGD(eps=0.3, steps=40)]).split(":")[0]
        'weaker than the standard suite (no APGD-CE, no APGD-T or APGD-DLR, no Square)'

    """
    missing = []
    for what, names, effort, standard in STANDARD_PARTS:
        found = [getattr(a, effort, 0) for a in attacks if a.name in names]
        if not found:
            missing.append(f"no {what}")
        elif max(found) < standard:
            missing.append(f"{what} at {max(found)} {effort}, not {standard}")
    if not missing:
        return None
    return (
        f"weaker than the standard suite ({', '.join(missing)}): for the standard evaluation "
        f"run {command}"
    )
