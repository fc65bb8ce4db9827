"""The boundary and the clean pass: the data read batch by batch, checked, and classified once.

The clean pass is where the data is checked: each batch (read by :func:`mlsec.core.data.batches`,
which checks types, shapes and finite values) must lie within the bounds and its labels within
the model's outputs, and the model is checked on the first sample (its device, its output). After
that the survivors chain hands the attacks batches it knows to be well formed.

The pass also fingerprints the data for the checkpoint: a SHA-256 over each sample's own digest
in index order, so the fingerprint does not depend on the batch size or on how many processes
read the data. In a job of several processes the batches are dealt out to the ranks in turn and
the per-sample results gathered by index.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from torch import nn

from mlsec.core import model as _model
from mlsec.core.data import Samples, batches
from mlsec.core.distributed import Group, gather_results
from mlsec.core.keyed import SampleKeys, drawing_for
from mlsec.core.progress import Tracker
from mlsec.core.validation import check_batch, run_model
from mlsec.errors import InputError

__all__ = ["HEAD", "CleanPass", "clean_pass"]

# The clean logits kept for the sanity checks: those of the first HEAD samples.
HEAD = 256


@dataclass(frozen=True)
class CleanPass:
    """The model on the clean data.

    Attributes:
        correct: bool ``[n]``: the model classifies the sample correctly.
        logits: float32 ``[min(n, HEAD), classes]`` on the CPU: the first samples' logits.
        digest: the data's fingerprint (per-sample digests, in index order).

    """

    correct: torch.Tensor
    logits: torch.Tensor
    digest: str

    @property
    def accuracy(self) -> float:
        """Clean accuracy."""
        return int(self.correct.sum()) / len(self.correct)


@dataclass(frozen=True)
class _Share:
    """One rank's part of the pass: its samples, their correctness, digests and first logits."""

    index: list[int]
    correct: list[bool]
    digests: list[bytes]
    head: list[tuple[int, torch.Tensor]]


def _check_bounds(x: torch.Tensor, index: torch.Tensor, bounds: tuple[float, float]) -> None:
    low, high = float(x.min()), float(x.max())
    if low < bounds[0] - 1e-6 or high > bounds[1] + 1e-6:
        flat = x.flatten(1)
        outside = (flat.amin(1) < bounds[0] - 1e-6) | (flat.amax(1) > bounds[1] + 1e-6)
        first = int(index[outside.nonzero()[0, 0]])
        raise InputError(
            f"inputs range over [{low:.4g}, {high:.4g}], outside the bounds {bounds} (first at "
            f"sample {first}); scale them into the bounds, or set bounds (and wrap a normalizing "
            "model with mlsec.Normalized)"
        )


def _check_labels(y: torch.Tensor, classes: int) -> None:
    low, high = int(y.min()), int(y.max())
    if low < 0 or high >= classes:
        raise InputError(
            f"labels lie in [{low}, {high}] but the model has {classes} outputs; "
            f"labels must lie in [0, {classes - 1}]"
        )


def _sample_digests(x: torch.Tensor, y: torch.Tensor) -> list[bytes]:
    flat = x.detach().cpu().contiguous().flatten(1).numpy()
    labels = y.cpu().tolist()
    return [
        hashlib.sha256(row.tobytes() + label.to_bytes(8, "little", signed=True)).digest()
        for row, label in zip(flat, labels, strict=True)
    ]


def clean_pass(
    model: nn.Module,
    samples: Samples,
    *,
    bounds: tuple[float, float],
    batch_size: int,
    tracker: Tracker,
    group: Group | None = None,
    workers: int = 0,
    name: str = "model",
    description: str = "clean",
) -> CleanPass:
    """Classify every sample once, checking the data and the model's outputs on the way.

    A randomised model (a purifier with random restarts) draws for each sample from keys of its
    index (:mod:`mlsec.core.keyed`), so the pass does not depend on the batch layout.

    Raises:
        InputError: a batch lies outside ``bounds``, holds labels outside the model's outputs,
            or the model returns something other than finite logits ``[batch, classes]``.

    """
    group = group or Group()
    device = _model.device_of(model)
    n = len(samples)
    starts = range(0, n, batch_size)[group.rank :: group.world]
    mine = torch.cat(
        [torch.arange(s, min(s + batch_size, n)) for s in starts]
        or [torch.zeros(0, dtype=torch.long)]
    )
    stage = tracker.stage(description, total=n)
    scale = n / max(len(mine), 1)

    def work() -> _Share:
        share = _Share(index=[], correct=[], digests=[], head=[])
        shown = 0
        pin = device.type == "cuda"
        with _model.frozen(model), torch.no_grad():
            for batch in batches(samples, mine, batch_size, workers=workers, pin_memory=pin):
                _check_bounds(batch.x, batch.index, bounds)
                xb = batch.x.to(device, _model.compute_dtype(model, batch.x), non_blocking=pin)
                yb = batch.y.to(device)
                if not share.index:
                    check_batch(model, xb[:1], yb[:1], None, bounds)
                with drawing_for(SampleKeys.of(0, batch.index.to(device)), 0):
                    out = run_model(model, xb, name)
                if not isinstance(out, torch.Tensor) or out.dim() != 2:
                    raise InputError("the model must return logits [batch, classes]")
                if not bool(torch.isfinite(out).all()):
                    raise InputError("the model returned NaN or infinite logits on the clean data")
                _check_labels(batch.y, out.shape[1])
                logits = out.float().cpu()
                share.index.extend(batch.index.tolist())
                share.correct.extend((logits.argmax(dim=1) == batch.y).tolist())
                share.digests.extend(_sample_digests(batch.x, batch.y))
                head = batch.index < HEAD
                share.head.extend(zip(batch.index[head].tolist(), logits[head], strict=True))
                now = min(round(len(share.index) * scale), n)
                stage.advance(now - shown)
                shown = now
        return share

    shares: list[_Share] = gather_results(group, work)
    stage.finish()
    return _combine(shares, n)


def _combine(shares: list[_Share], n: int) -> CleanPass:
    correct = torch.zeros(n, dtype=torch.bool)
    digests: list[bytes] = [b""] * n
    head: dict[int, torch.Tensor] = {}
    for share in shares:
        correct[torch.tensor(share.index, dtype=torch.long)] = torch.tensor(
            share.correct, dtype=torch.bool
        )
        for i, d in zip(share.index, share.digests, strict=True):
            digests[i] = d
        head.update(share.head)
    fingerprint = hashlib.sha256(b"".join(digests)).hexdigest()
    logits = torch.stack([head[i] for i in range(min(n, HEAD))])
    return CleanPass(correct=correct, logits=logits, digest=fingerprint)
