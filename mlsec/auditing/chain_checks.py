"""The attack checks, read from what the survivors chain already found.

Each check asks what the chain's per-stage masks already answer, and runs extra only where they
cannot: on a small probe (:data:`PROBE` samples at most), never repeating an attack on samples
whose result for that attack and eps the chain already holds.

- **Black-box beats white-box**: the chain's own marginal gain of a gradient-free attack (Square)
  run after the gradient attacks. Nothing extra runs.
- **Rising with eps**: an example an attack found at a smaller eps is admissible at a larger one.
  The chain does not re-attack samples it broke, so the attack runs again, at the larger eps, on a
  probe of the samples it broke at the smaller one; failing on most of them means it misses
  examples that exist.
- **Iterative worse than FGSM**: with FGSM in the chain before an iterative attack, the iterative
  attack runs on a probe of the samples broken before its turn (the chain already knows how it did
  on the others); without FGSM, FGSM runs on a probe of the samples the whole chain left standing.
- **Blocked at an erasing budget**: the last iterative attack with at most
  :data:`ERASING_STEPS` steps at a budget that can erase any input, on a probe of correctly
  classified samples.

Every check records what it cost (:class:`~mlsec.auditing.checks.CheckRun`), so the report says
which checks ran, on how many samples and for how long.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field

import torch
from torch import nn

from mlsec.attacks import FGSM, PGD, Attack
from mlsec.auditing.checks import CheckRun, timed
from mlsec.auditing.plan import Plan, PlannedAttack
from mlsec.core import model as _model
from mlsec.core.data import Samples
from mlsec.core.text import percent
from mlsec.core.threat import geometry

__all__ = [
    "ERASING_STEPS",
    "PROBE",
    "ChainView",
    "black_box_beats_gradients",
    "blocked_at_an_erasing_budget",
    "chain_checks",
    "iterative_below_fgsm",
    "rising_with_eps",
]

PROBE = 32  # samples a check attacks at most, per attack and eps
ERASING_STEPS = 10  # steps of the erasing-budget check
LOST = 0.5  # rising with eps: the attack fails on more than this fraction of its own examples
BLACK_BOX_GAIN = 0.05  # Square may edge out the gradient attacks by a few samples unmasked


@dataclass
class ChainView:
    """The chain's masks, and a probe runner that counts what each check attacks."""

    model: nn.Module
    samples: Samples
    plan: Plan
    correct: torch.Tensor
    robust: dict[tuple[str, float], torch.Tensor]
    runs: list[CheckRun] = field(default_factory=list)

    @property
    def n(self) -> int:
        """Samples in the audit."""
        return len(self.correct)

    @property
    def slack(self) -> int:
        """More than a sample or two (or 0.75% of the samples) of difference."""
        return max(2, round(0.0075 * self.n))

    def before(self, stage: PlannedAttack) -> torch.Tensor:
        """The samples standing when ``stage`` took its turn (what it was handed)."""
        i = self.plan.stages.index(stage)
        if i == 0:
            return self.correct
        previous = self.plan.stages[i - 1]
        return self.robust[(previous.label, previous.eps)]

    def after(self, stage: PlannedAttack) -> torch.Tensor:
        """The samples standing after ``stage``."""
        return self.robust[(stage.label, stage.eps)]

    def attack(self, attack: Attack, pool: torch.Tensor) -> tuple[int, int]:
        """Run ``attack`` alone on up to :data:`PROBE` samples of ``pool``: (probed, broken)."""
        rows = pool.nonzero().flatten()[:PROBE].tolist()
        if not rows:
            return 0, 0
        device = _model.device_of(self.model)
        x, y = (t.to(device) for t in self.samples.get(rows))
        index = torch.tensor(rows, dtype=torch.long, device=device)
        result = attack.run(self.model, x, y, index=index)
        return len(rows), int(result.success.sum())


def rising_with_eps(view: ChainView) -> tuple[list[str], int]:
    """An attack that fails at a larger eps on examples it found at a smaller one."""
    warnings, probed = [], 0
    for entry in view.plan.suite.entries:
        stages = [s for s in view.plan.stages if s.label == entry.label]
        for small, large in itertools.pairwise(stages):
            broke = view.before(small) & ~view.after(small)
            tried, broken = view.attack(large.attack, broke)
            probed += tried
            lost = tried - broken
            if tried >= 4 and lost > LOST * tried:
                warnings.append(
                    f"robust accuracy under {entry.label} rises with eps: of {tried} samples it "
                    f"broke at eps {small.eps:g} it fails on {lost} at eps {large.eps:g}, where "
                    "the same examples are admissible: the attack is not finding examples that "
                    "exist"
                )
    return warnings, probed


def _iterative(stage: PlannedAttack) -> bool:
    return getattr(stage.attack, "steps", 1) > 1 and not stage.attack.gradient_free


def iterative_below_fgsm(view: ChainView) -> tuple[list[str], int]:
    """An iterative attack that does worse than single-step FGSM at the same eps."""
    warnings, probed = [], 0
    for eps in view.plan.eps:
        stages = view.plan.at(eps)
        iterative = next((s for s in stages if _iterative(s)), None)
        if iterative is None:
            continue
        earlier = stages[: stages.index(iterative)]
        if any(isinstance(s.attack, FGSM) for s in earlier):
            # Broken before the iterative attack's turn: would it have broken them itself?
            pool = view.correct & ~view.before(iterative)
            tried, broken = view.attack(iterative.attack, pool)
            missed = 0 if tried == 0 else (tried - broken) * int(pool.sum()) / tried
            gained = int((view.before(iterative) & ~view.after(iterative)).sum())
            worse = missed > gained + view.slack
            detail = f"it misses about {missed:.0f} of the samples broken before it"
        else:
            # Left standing by the whole chain: does FGSM break them?
            standing = view.after(stages[-1])
            reference = FGSM(eps=eps, norm=iterative.attack.norm, bounds=iterative.attack.bounds)
            tried, broken = view.attack(reference, standing)
            extra = 0 if tried == 0 else broken * int(standing.sum()) / tried
            worse = extra > view.slack
            detail = f"FGSM breaks {broken} of {tried} samples the whole chain left standing"
        probed += tried
        if worse:
            warnings.append(
                f"the iterative attack {iterative.label} does worse than single-step FGSM at eps "
                f"{eps:g} ({detail}): a sign of gradient masking"
            )
    return warnings, probed


def black_box_beats_gradients(view: ChainView) -> tuple[list[str], int]:
    """A gradient-free attack that breaks many samples after every gradient attack failed."""
    warnings = []
    for eps in view.plan.eps:
        stages = view.plan.at(eps)
        seen_gradient = False
        for stage in stages:
            if not stage.attack.gradient_free:
                seen_gradient = True
                continue
            if not seen_gradient:
                continue
            gain = int((view.before(stage) & ~view.after(stage)).sum()) / view.n
            # More than 5 points (or the data's noise): a black-box search can edge out the
            # gradient attacks on a robust model by a sample or two without any masking.
            if gain > max(view.slack / view.n, BLACK_BOX_GAIN):
                warnings.append(
                    f"the black-box attack {stage.label} does better than every gradient attack "
                    f"at eps {eps:g}: it breaks {percent(gain)} of all samples after they all "
                    "failed; the gradients mislead the white-box attacks (gradient masking)"
                )
    return warnings, 0


def blocked_at_an_erasing_budget(view: ChainView) -> tuple[list[str], int]:
    """Accuracy above chance at a budget large enough to erase any input (a few steps)."""
    iterative = [e for e in view.plan.suite.entries if isinstance(e.attack, PGD)]
    bounds = view.plan.suite.bounds
    base: Attack = iterative[-1].attack if iterative else PGD(eps=0.0, bounds=bounds)
    low, high = base.bounds
    x0, _ = view.samples.get([0])
    huge = geometry(base.norm).erasing_eps(low, high, x0[0].numel())
    attack = dataclasses.replace(base, eps=huge)
    if isinstance(attack, PGD):  # one start, a few steps; the default step scales with eps
        steps = min(attack.steps, ERASING_STEPS)
        attack = dataclasses.replace(attack, restarts=1, step_size=None, steps=steps)
    tried, broken = view.attack(attack, view.correct)
    if tried == 0:
        return [], 0
    device = _model.device_of(view.model)
    with torch.no_grad():
        classes = view.model(x0.to(device, _model.compute_dtype(view.model, x0))).shape[1]
    accuracy = (tried - broken) / tried
    if accuracy <= 1.0 / classes + 1.5 / tried:
        return [], tried
    return [
        f"accuracy stays at {percent(accuracy)} under {base.name} at eps {huge:g}, a budget "
        f"that can erase any input (chance is {100 / classes:.0f}%): the attack is blocked, "
        "not the threat"
    ], tried


def chain_checks(view: ChainView) -> list[str]:
    """Every attack check, each timed into ``view.runs``; the warnings."""
    runs = view.runs
    return [
        *timed(runs, "black box beats gradients", "chain", lambda: black_box_beats_gradients(view)),
        *timed(runs, "rising with eps", "probe", lambda: rising_with_eps(view)),
        *timed(runs, "iterative below FGSM", "probe", lambda: iterative_below_fgsm(view)),
        *timed(runs, "erasing budget", "probe", lambda: blocked_at_an_erasing_budget(view)),
    ]
