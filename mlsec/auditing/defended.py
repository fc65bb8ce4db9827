"""Audit a purifier the way it would be attacked: non-adaptive and adaptive, side by side.

- **non-adaptive**: adversarial examples made against the bare classifier, then purified. This is
  how the papers that introduced Defense-GAN and APE-GAN evaluated them.
- **adaptive**: the attack runs against the defended model itself. A purifier that is not
  differentiable (Defense-GAN's projection) is crossed with BPDA (its declared surrogate, the
  identity); a randomised one (Defense-GAN's random starts) is attacked in expectation with EOT
  over ``eot`` draws folded into the batch. A differentiable purifier (APE-GAN) gets the exact
  gradient.

The adaptive number is the one to trust; when it falls clearly below the non-adaptive one the
report says so: the robustness holds only against attackers who ignore the defense.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from torch import nn

from mlsec.attacks import EOT, create, get
from mlsec.attacks.base import Attack
from mlsec.core.validation import check_count
from mlsec.defenses.base import Purifier
from mlsec.errors import InputError

__all__ = ["GAP", "DefenseReport", "DefenseRow", "evaluate_defense", "worst_cases"]

# A gap between the non-adaptive and the adaptive worst case this large (accuracy, 0-1) is flagged.
GAP = 0.10


@dataclass(frozen=True)
class DefenseRow:
    """Accuracies after one attack at one eps: bare classifier, then behind the defense."""

    attack: str
    eps: float
    undefended: float
    non_adaptive: float
    adaptive: float | None  # None: this attack is not run adaptively


@dataclass
class DefenseReport:
    """What :func:`evaluate_defense` measured."""

    defense: str
    params: dict[str, Any]
    model: str
    data: str
    n: int
    clean_undefended: float
    clean_defended: float
    rows: list[DefenseRow]
    worst_non_adaptive: dict[float, float]
    worst_adaptive: dict[float, float]
    settings: dict[str, Any]
    seconds: float
    flags: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (eps keys as strings)."""
        out = dataclasses.asdict(self)
        for key in ("worst_non_adaptive", "worst_adaptive"):
            out[key] = {f"{eps:g}": acc for eps, acc in out[key].items()}
        return out

    def to_json(self) -> str:
        """The report as indented JSON."""
        return json.dumps(self.to_dict(), indent=2)

    def table(self) -> Table:
        """A rich table: a row per attack and eps; undefended, non-adaptive, adaptive."""
        table = Table(
            title=f"{escape(self.model)} behind {escape(self.defense)} on {escape(self.data)} "
            f"({self.n} samples)",
            caption="non-adaptive: made against the bare classifier, then purified; adaptive: "
            "through the purifier (" + escape(self.settings["gradient"]) + ")",
        )
        for name, justify in (
            ("attack", "left"),
            ("eps", "right"),
            ("undefended", "right"),
            ("non-adaptive", "right"),
            ("adaptive", "right"),
        ):
            table.add_column(name, justify=justify)  # type: ignore[arg-type]
        defended = _pct(self.clean_defended)
        table.add_row("clean", "", _pct(self.clean_undefended), defended, defended)
        table.add_section()
        for row in self.rows:
            adaptive = "—" if row.adaptive is None else f"[bold]{_pct(row.adaptive)}"
            table.add_row(
                escape(row.attack),
                f"{row.eps:g}",
                _pct(row.undefended),
                _pct(row.non_adaptive),
                adaptive,
            )
        table.add_section()
        for eps in self.worst_non_adaptive:
            table.add_row(
                "worst case",
                f"{eps:g}",
                "",
                _pct(self.worst_non_adaptive[eps]),
                f"[bold]{_pct(self.worst_adaptive[eps])}" if eps in self.worst_adaptive else "—",
            )
        return table


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def _attack(name: str, eps: float, steps: int, seed: int) -> Attack:
    params: dict[str, Any] = {"eps": eps, "seed": seed}
    if "steps" in {f.name for f in dataclasses.fields(get(name))}:
        params["steps"] = steps
    return create(name, **params)


@torch.no_grad()
def _correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int) -> torch.Tensor:
    return torch.cat(
        [model(xb).argmax(1) == yb for xb, yb in zip(x.split(batch), y.split(batch), strict=True)]
    )


def worst_cases(
    clean: torch.Tensor, non_adaptive: Sequence[torch.Tensor], adaptive: Sequence[torch.Tensor]
) -> tuple[float, float]:
    """Per-sample worst cases from "still correct" masks: ``(non-adaptive, adaptive)``.

    A sample counts only if it is correct clean and under every attack of the column. The
    adaptive column also takes in the non-adaptive attacks: an attacker who knows the defense may
    still use a transfer attack where that one works better.

    Example:
        >>> import torch
        >>> clean = torch.tensor([True, True, True, False])
        >>> transfer = [torch.tensor([True, False, True, False])]
        >>> through = [torch.tensor([True, True, False, False])]
        >>> worst_cases(clean, transfer, through)
        (0.5, 0.25)

    """
    kept_non = clean.clone()
    for mask in non_adaptive:
        kept_non &= mask
    kept_ada = kept_non.clone()
    for mask in adaptive:
        kept_ada &= mask
    return float(kept_non.float().mean()), float(kept_ada.float().mean())


def evaluate_defense(
    defense: Purifier,
    model: nn.Module,
    data: tuple[torch.Tensor, torch.Tensor],
    *,
    eps: Sequence[float] = (0.3,),
    attacks: Sequence[str] = ("fgsm", "pgd", "apgd"),
    adaptive: Sequence[str] = ("pgd", "apgd"),
    steps: int = 20,
    eot: int = 4,
    seed: int = 0,
    batch_size: int = 100,
    progress: bool = False,
    console: Console | None = None,
    model_name: str = "model",
    data_name: str = "data",
) -> DefenseReport:
    """Accuracy of ``model`` behind ``defense`` under non-adaptive and adaptive attacks (linf).

    Args:
        defense: a fitted purifier.
        model: the bare classifier (eval mode; returns logits).
        data: ``(x, y)`` within [0, 1].
        eps: linf budgets.
        attacks: registered attacks run non-adaptively (against the bare classifier).
        adaptive: registered gradient attacks also run adaptively (through the defense).
        steps: iterations of the iterative attacks.
        eot: draws of the defense's randomness per adaptive step (EOT); ignored for a
            deterministic purifier.
        seed: the attacks' seed.
        batch_size: samples per attack call (an EOT call purifies ``eot`` times as many).
        progress: show a rich progress bar per attack.
        console: where progress goes (stderr by default).
        model_name: the model's label in the report.
        data_name: the data's label in the report.

    Returns:
        A :class:`DefenseReport`; its ``flags`` say when the adaptive worst case is more than
        :data:`GAP` below the non-adaptive one.

    """
    if not isinstance(defense, Purifier):
        raise InputError(f"evaluate_defense needs a purifier (got {type(defense).__name__})")
    check_count("steps", steps)
    check_count("eot", eot)
    check_count("batch_size", batch_size)
    if not eps or any(not 0 <= e <= 1 for e in eps):
        raise InputError(f"eps values must lie in [0, 1] (got {list(eps)})")
    unknown = [a for a in adaptive if a not in attacks]
    if unknown:
        raise InputError(f"adaptive attacks {unknown} must also be in attacks {list(attacks)}")
    for name in attacks:
        get(name)  # unknown names fail here, in one line, before any work
    x, y = data
    x, y = x.detach(), y.detach()
    start = time.perf_counter()
    model.eval()
    defended = defense.wrap(model).eval()
    draws = eot if defense.randomized else 1
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} batches"),
        TimeElapsedColumn(),
        console=console or Console(stderr=True),
        disable=not progress,
    )
    batches = list(zip(x.split(batch_size), y.split(batch_size), strict=True))
    grid = sorted(eps)
    with bar:
        clean_bare = _correct(model, x, y, batch_size)
        clean_def = _correct(defended, x, y, batch_size)
        # Per eps, the per-sample "still correct" masks of each column's attacks.
        non_masks: dict[float, list[torch.Tensor]] = {e: [] for e in grid}
        ada_masks: dict[float, list[torch.Tensor]] = {e: [] for e in grid}
        rows: list[DefenseRow] = []
        for name in attacks:
            for e in grid:
                attack = _attack(name, e, steps, seed)
                task = bar.add_task(f"{name} eps {e:g} non-adaptive", total=len(batches))
                bare_ok, def_ok = [], []
                for xb, yb in batches:
                    x_adv = attack(model, xb, yb)
                    with torch.no_grad():
                        bare_ok.append(model(x_adv).argmax(1) == yb)
                        def_ok.append(defended(x_adv).argmax(1) == yb)
                    bar.advance(task)
                bare = torch.cat(bare_ok) & clean_bare
                non = torch.cat(def_ok) & clean_def
                non_masks[e].append(non)
                ada_acc = None
                if name in adaptive:
                    through = EOT(attack=attack, samples=draws) if draws > 1 else attack
                    task = bar.add_task(f"{name} eps {e:g} adaptive", total=len(batches))
                    ada_ok = []
                    for (xb, yb), standing in zip(
                        batches, clean_def.split(batch_size), strict=True
                    ):
                        ok = torch.zeros_like(standing)
                        if bool(standing.any()):  # survivors only
                            x_adv = through(defended, xb[standing], yb[standing])
                            ok[standing] = _correct(defended, x_adv, yb[standing], batch_size)
                        ada_ok.append(ok)
                        bar.advance(task)
                    ada = torch.cat(ada_ok)
                    ada_masks[e].append(ada)
                    ada_acc = float(ada.float().mean())
                rows.append(
                    DefenseRow(
                        name, e, float(bare.float().mean()), float(non.float().mean()), ada_acc
                    )
                )
    worst_non, worst_ada = {}, {}
    for e in grid:
        worst_non[e], ada_worst = worst_cases(clean_def, non_masks[e], ada_masks[e])
        if adaptive:
            worst_ada[e] = ada_worst
    gradient = "exact gradient" if defense.differentiable else f"BPDA, {defense.surrogate_name}"
    if draws > 1:
        gradient += f", EOT over {draws} draws"
    report = DefenseReport(
        defense=defense.name,
        params=defense.params(),
        model=model_name,
        data=data_name,
        n=len(y),
        clean_undefended=float(clean_bare.float().mean()),
        clean_defended=float(clean_def.float().mean()),
        rows=rows,
        worst_non_adaptive=worst_non,
        worst_adaptive=worst_ada,
        settings={
            "eps": grid,
            "attacks": list(attacks),
            "adaptive": list(adaptive),
            "steps": steps,
            "eot": draws,
            "seed": seed,
            "gradient": gradient,
        },
        seconds=round(time.perf_counter() - start, 1),
    )
    for e in worst_ada:
        if worst_non[e] - worst_ada[e] > GAP:
            report.flags.append(
                f"robustness holds only against non-adaptive attacks: at eps {e:g} the worst "
                f"case falls from {_pct(worst_non[e])} (attacks on the bare classifier) to "
                f"{_pct(worst_ada[e])} when the attack goes through {defense.name}"
            )
    return report
