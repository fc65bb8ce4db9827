"""The survivors chain: attacks over the eps grid, each on the samples still standing, resumable.

Survivors only: the eps grid is walked in ascending order and, at each eps, the plan's attacks run
in chain order, each on the samples nothing has broken yet. A sample broken at a smaller eps is
broken at every larger one (the same example is admissible), and a sample one attack broke is not
handed to the next. The per-sample worst case is the fraction of samples surviving every attack;
it equals the naive run's (every attack on every sample at every eps) while costing less.

:class:`Runner` is the part both audits share: it attacks a pool of samples in batches, records
each finished batch in the checkpoint (:mod:`mlsec.auditing.resume`) and replays recorded batches
on resume. What one batch does (which model the attack follows, which models judge the result)
is the caller's ``strike``; the plain audit's is ``attack.run_unchecked(model, ...)``: the data
was checked once at the boundary (:func:`mlsec.auditing.clean.check_data` and the clean pass), so
the batches skip the per-batch checks and their host syncs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from mlsec.auditing.plan import Plan
from mlsec.auditing.report import AttackOutcome
from mlsec.auditing.resume import BatchRecord, Checkpoint
from mlsec.core.progress import Tracker

__all__ = ["ChainResult", "Runner", "StageResult", "Strike", "run_chain"]

# One batch: (inputs, labels) on the model's device -> per judge, a bool mask of broken samples.
Strike = Callable[[torch.Tensor, torch.Tensor], list[torch.Tensor]]


@dataclass(frozen=True)
class StageResult:
    """One stage (an attack at one eps): per judge a bool ``[n]`` mask of broken samples."""

    broken: list[torch.Tensor]
    attacked: int
    seconds: float


@dataclass
class Runner:
    """Attacks pools of samples of one data set in batches, stage after stage, resumably.

    Args:
        x, y: the data set, checked once (:func:`mlsec.auditing.clean.check_data`).
        batch_size: samples per attack call.
        device: where the batches go.
        tracker: progress, one stage per attack and eps.
        store: the checkpoint, or ``None``.
        counter: an object whose integer ``calls`` attribute keys its randomness (a randomised
            purifier's :class:`~mlsec.defenses.base.PurifiedModel`): recorded after each batch
            and restored when a batch is replayed, so a resumed run draws what the first did.

    """

    x: torch.Tensor
    y: torch.Tensor
    batch_size: int
    device: torch.device
    tracker: Tracker
    store: Checkpoint | None = None
    counter: Any = None
    stage: int = field(default=0)

    def batches(self, pool: torch.Tensor, aligned: bool) -> Iterator[tuple[int, torch.Tensor]]:
        """Numbered batches of the pool's indices.

        Packed (default): the pool split into batches. Aligned: the data's own batches, each
        cut down to its samples in the pool (empty ones skipped).
        """
        if not aligned:
            yield from enumerate(pool.nonzero().flatten().split(self.batch_size))
            return
        for number, start in enumerate(range(0, len(pool), self.batch_size)):
            chunk = torch.arange(start, min(start + self.batch_size, len(pool)))
            chunk = chunk[pool[start : start + self.batch_size]]
            if len(chunk):
                yield number, chunk

    def attack(
        self,
        description: str,
        pool: torch.Tensor,
        strike: Strike,
        *,
        judges: int = 1,
        aligned: bool = False,
    ) -> StageResult:
        """Run ``strike`` on the pool's samples; returns each judge's broken mask."""
        batches = list(self.batches(pool, aligned))
        attacked = sum(len(chunk) for _, chunk in batches)
        progress = self.tracker.stage(description, total=attacked)
        masks = [torch.zeros(len(pool), dtype=torch.bool) for _ in range(judges)]
        seconds = 0.0
        for number, chunk in batches:
            indices = chunk.tolist()
            record = self.store.get(self.stage, number, indices) if self.store else None
            if record is None:
                record = self._strike(number, chunk, indices, strike)
            elif record.calls is not None and self.counter is not None:
                self.counter.calls = record.calls
            for mask, broken in zip(
                masks, [record.broken, *(record.also_broken or [])], strict=True
            ):
                mask[torch.tensor(broken, dtype=torch.long)] = True
            seconds += record.seconds
            progress.advance(len(indices))
        progress.finish()
        self.stage += 1
        return StageResult(broken=masks, attacked=attacked, seconds=seconds)

    def _strike(
        self, number: int, chunk: torch.Tensor, indices: list[int], strike: Strike
    ) -> BatchRecord:
        began = time.perf_counter()
        flags = strike(self.x[chunk].to(self.device), self.y[chunk].to(self.device))
        lists = [chunk[flag.cpu()].tolist() for flag in flags]
        record = BatchRecord(
            stage=self.stage,
            batch=number,
            indices=indices,
            broken=lists[0],
            seconds=time.perf_counter() - began,
            also_broken=lists[1:] or None,
            calls=None if self.counter is None else int(self.counter.calls),
        )
        if self.store is not None:
            self.store.append(record)
        return record


@dataclass(frozen=True)
class ChainResult:
    """The chain's numbers: outcomes in order, standing masks per stage, worst case per eps."""

    outcomes: list[AttackOutcome]
    robust: dict[tuple[str, float], torch.Tensor]
    worst_case: dict[float, float]


def run_chain(runner: Runner, model: nn.Module, plan: Plan, correct: torch.Tensor) -> ChainResult:
    """The plan's stages in order, each on the survivors (or every sample without survivors)."""
    n = len(correct)
    alive = correct.clone()  # standing after every attack at every eps so far
    outcomes: list[AttackOutcome] = []
    robust: dict[tuple[str, float], torch.Tensor] = {}
    worst_case: dict[float, float] = {}
    for value in plan.eps:
        for planned in plan.at(value):
            attack = planned.attack

            def strike(
                xb: torch.Tensor, yb: torch.Tensor, attack: Any = attack
            ) -> list[torch.Tensor]:
                return [attack.run_unchecked(model, xb, yb).success]

            pool = alive if plan.survivors else torch.ones_like(alive)
            result = runner.attack(f"{planned.label} eps={value:g}", pool, strike)
            newly = result.broken[0]
            broken = int((alive & newly).sum())
            alive &= ~newly
            robust[(planned.label, value)] = alive.clone()
            outcomes.append(
                AttackOutcome(
                    attack=planned.label,
                    eps=value,
                    robust_accuracy=int(alive.sum()) / n,
                    attacked=result.attacked,
                    broken=broken,
                    seconds=result.seconds,
                    params={k: v for k, v in attack.params().items() if k != "eps"},
                )
            )
        worst_case[value] = int(alive.sum()) / n
    return ChainResult(outcomes=outcomes, robust=robust, worst_case=worst_case)
