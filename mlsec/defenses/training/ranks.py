"""A training run over the ranks of a process group: DistributedDataParallel on one global batch.

Every rank holds the whole training set and draws the same seeded order; each global batch
(``config.batch_size`` samples, the last one possibly smaller) is cut into contiguous shares, one
per rank, that differ in size by at most one sample. A rank crafts adversarial examples for its
share only, their randomness keyed by the samples' positions in the training set, so a sample
draws the same start whichever rank attacks it. Its loss is scaled by
``share * world / global batch``: DistributedDataParallel averages gradients over the ranks, and
the average is then exactly the gradient of the single process's mean over the global batch (a
rank with an empty share still joins the gradient average, with zeros). Rank 0 alone writes.

Equal weights to a single process need a deterministic model: batch-norm statistics come from
each rank's share (rank 0's are kept) and dropout draws from each rank's own generator.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from torch import nn

from mlsec.core import distributed
from mlsec.core.distributed import Group

__all__ = ["Ranks"]

T = TypeVar("T")


@dataclass(frozen=True)
class Ranks:
    """Where this process stands in a training run (the single process without a group)."""

    group: Group = field(default_factory=distributed.current)

    @property
    def is_main(self) -> bool:
        """Rank 0: the rank that writes the run folder and prints."""
        return self.group.is_main

    @property
    def parallel(self) -> bool:
        """Whether gradients are averaged over the ranks (a process group is initialised)."""
        return self.group.active

    def share(self, batch: torch.Tensor) -> torch.Tensor:
        """The contiguous part of a global batch this rank trains on (sizes differ by <= 1)."""
        if not self.parallel:
            return batch
        return torch.tensor_split(batch, self.group.world)[self.group.rank]

    def loss_scale(self, share: int, total: int) -> float:
        """The factor on a share's mean loss that makes DDP's average the global batch's mean."""
        return share * self.group.world / total

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` in DistributedDataParallel when the run is parallel, else ``model`` itself.

        Buffers (batch-norm statistics) are not broadcast at every forward: a rank with an empty
        share runs fewer forwards than the others. :meth:`sync_buffers` copies rank 0's.
        """
        if not self.parallel:
            return model
        device = next(model.parameters()).device
        ids = [device] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)

    def sync_buffers(self, model: nn.Module) -> None:
        """Give every rank rank 0's buffers (batch-norm running statistics)."""
        buffers = dict(model.named_buffers())
        if not self.parallel or not buffers:
            return
        main = distributed.broadcast(self.group, {k: v.cpu() for k, v in buffers.items()})
        with torch.no_grad():
            for name, value in buffers.items():
                value.copy_(main[name])

    def sums(self, values: list[float]) -> list[float]:
        """Each of ``values`` summed over the ranks, in rank order (the same on every rank)."""
        totals = [0.0] * len(values)
        for mine in distributed.all_gather(self.group, values):
            totals = [total + value for total, value in zip(totals, mine, strict=True)]
        return totals

    def together(self, work: Callable[[], T]) -> T:
        """``work()`` on every rank; an :class:`InputError` on any rank stops them all with it."""
        return distributed.gather_results(self.group, work)[self.group.rank]

    def on_main(self, work: Callable[[], Any]) -> None:
        """``work()`` on rank 0 only; its :class:`InputError` stops every rank (a barrier too)."""
        distributed.gather_results(self.group, lambda: work() if self.is_main else None)
