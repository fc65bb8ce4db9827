"""The survivors chain: attacks over the eps grid, each on the samples still standing, resumable.

Survivors only: the eps grid is walked in ascending order and, at each eps, the plan's attacks run
in chain order, each on the samples nothing has broken yet. A sample broken at a smaller eps is
broken at every larger one (the same example is admissible), and a sample one attack broke is not
handed to the next. The per-sample worst case is the fraction of samples surviving every attack;
it equals the naive run's (every attack on every sample at every eps) while costing less.

:class:`Runner` is the part both audits share: it attacks a pool of samples in batches read from
the data set (:func:`mlsec.core.data.batches`), records each finished batch in the checkpoint
(:mod:`mlsec.auditing.resume`) and, on resume, takes the recorded samples' results and attacks
only the rest. In a job of several processes (:mod:`mlsec.core.distributed`) the samples left
are dealt out to the ranks in turn (rank r takes every world-th), so robust samples, which cost
far more than broken ones, spread evenly; each rank attacks its share, and the per-sample results
are gathered by index after each stage, so every rank holds the same masks. Each sample's random
draws are keyed by its index (:mod:`mlsec.core.keyed`): the numbers do not depend on the batch
size, the split, or the resume point. What one batch does (which model the attack follows,
which models judge the result) is the caller's ``strike``; the plain audit's is
``attack.run_unchecked(model, ...)``: the data was checked once, in the clean pass, so the
batches skip the per-batch checks and their host syncs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from mlsec.auditing.plan import Plan
from mlsec.auditing.report import AttackOutcome
from mlsec.auditing.resume import BatchRecord, Checkpoint
from mlsec.core.data import Samples, batches
from mlsec.core.distributed import Group, gather_results
from mlsec.core.progress import Tracker
from mlsec.errors import InputError

__all__ = ["ChainResult", "Runner", "StageResult", "Strike", "run_chain"]

# One batch: (inputs, labels, sample indices) on the model's device -> per judge, a bool mask of
# broken samples.
Strike = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], list[torch.Tensor]]


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
        samples: the data set, checked once by the clean pass.
        batch_size: samples per attack call.
        device: where the batches go.
        tracker: progress, one stage per attack and eps (rank 0's shows the whole job).
        store: the checkpoint, or ``None``.
        group: the processes sharing the job (one by default).
        workers: data-loading worker processes.

    """

    samples: Samples
    batch_size: int
    device: torch.device
    tracker: Tracker
    store: Checkpoint | None = None
    group: Group = field(default_factory=Group)
    workers: int = 0
    stage: int = field(default=0)

    def attack(
        self, description: str, pool: torch.Tensor, strike: Strike, *, judges: int = 1
    ) -> StageResult:
        """Run ``strike`` on the pool's samples; returns each judge's broken mask."""
        masks = [torch.zeros(len(pool), dtype=torch.bool) for _ in range(judges)]
        todo = pool.clone()
        recorded_seconds = 0.0
        for record in self.store.stage_records(self.stage) if self.store else []:
            self._replay(record, pool, todo, masks)
            recorded_seconds += record.seconds
        attacked = int(pool.sum())
        progress = self.tracker.stage(description, total=attacked)
        progress.advance(attacked - int(todo.sum()))
        left = todo.nonzero().flatten()
        mine = left[self.group.rank :: self.group.world]
        # Rank 0 shows the job's progress as its own share's (the shares are dealt evenly).
        scale = len(left) / max(len(mine), 1)
        pin = self.device.type == "cuda"

        def work() -> tuple[list[list[int]], float]:
            broken: list[list[int]] = [[] for _ in range(judges)]
            done = shown = 0
            seconds = 0.0
            for batch in batches(
                self.samples, mine, self.batch_size, workers=self.workers, pin_memory=pin
            ):
                record = self._strike(batch.index, batch.x, batch.y, strike)
                for found, listed in zip(
                    broken, [record.broken, *(record.also_broken or [])], strict=True
                ):
                    found.extend(listed)
                seconds += record.seconds
                done += len(record.indices)
                now = min(round(done * scale), len(left))
                progress.advance(now - shown)
                shown = now
            return broken, seconds

        # An InputError on one rank (unreadable data, NaN logits) stops every rank at once.
        for broken, seconds in gather_results(self.group, work):
            for mask, listed in zip(masks, broken, strict=True):
                mask[torch.tensor(listed, dtype=torch.long)] = True
            recorded_seconds += seconds
        progress.finish()
        self.stage += 1
        return StageResult(broken=masks, attacked=attacked, seconds=recorded_seconds)

    def _replay(
        self, record: BatchRecord, pool: torch.Tensor, todo: torch.Tensor, masks: list[torch.Tensor]
    ) -> None:
        """Take a recorded batch's results; its samples are not attacked again."""
        indices = torch.tensor(record.indices, dtype=torch.long)
        if not bool(pool[indices].all()):
            raise InputError(
                f"{self.store.directory if self.store else 'the checkpoint'} does not match this "
                f"run (stage {self.stage} recorded samples this run does not attack); "
                "use a new folder",
                subject="checkpoint",
            )
        todo[indices] = False
        for mask, listed in zip(masks, [record.broken, *(record.also_broken or [])], strict=True):
            mask[torch.tensor(listed, dtype=torch.long)] = True

    def _strike(
        self, index: torch.Tensor, x: torch.Tensor, y: torch.Tensor, strike: Strike
    ) -> BatchRecord:
        began = time.perf_counter()
        to = self.device
        flags = strike(
            x.to(to, non_blocking=True),
            y.to(to, non_blocking=True),
            index.to(to, non_blocking=True),
        )
        lists = [index[flag.cpu()].tolist() for flag in flags]
        indices = index.tolist()
        record = BatchRecord(
            stage=self.stage,
            batch=indices[0],
            indices=indices,
            broken=lists[0],
            seconds=time.perf_counter() - began,
            also_broken=lists[1:] or None,
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
                xb: torch.Tensor, yb: torch.Tensor, index: torch.Tensor, attack: Any = attack
            ) -> list[torch.Tensor]:
                return [attack.run_unchecked(model, xb, yb, index=index).success]

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
