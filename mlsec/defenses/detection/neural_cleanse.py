"""Neural Cleanse (Wang et al. 2019): reverse-engineer a minimal trigger per class, flag outliers.

For every class ``k`` the method looks for the smallest mask ``m`` and a pattern ``p`` such that
stamping them on clean inputs, ``(1 - m) * x + m * p``, sends the model to ``k``. A class a
backdoor points to needs a far smaller mask than the others, so its mask's L1 norm is an outlier
below the median, measured by the anomaly index (median absolute deviation).

All classes are optimised at once: their masks and patterns are folded into the batch, each class
stamping the same clean batch, so one step costs one forward and backward of ``K x batch``
samples.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mlsec.core import model as _model
from mlsec.core.progress import Stage
from mlsec.core.validation import check_count, check_fraction, check_number, check_seed, run_model
from mlsec.errors import InputError

__all__ = ["NeuralCleanse", "ReversedTriggers", "anomaly_index", "flag_outliers", "mask_iou"]

# The consistency constant that makes the median absolute deviation estimate a normal's std.
MAD_CONSISTENCY = 1.4826


def _median(values: torch.Tensor) -> torch.Tensor:
    """The median, averaging the two middle values of an even count (as numpy does)."""
    ordered = values.double().sort().values
    half = ordered.numel() // 2
    if ordered.numel() % 2:
        return ordered[half]
    return (ordered[half - 1] + ordered[half]) / 2


def anomaly_index(norms: torch.Tensor) -> torch.Tensor:
    """Each value's distance from the median in units of the (consistent) median absolute deviation.

    ``|l - median(l)| / (1.4826 * median(|l - median(l)|))``; all zeros when every value is equal.

    Args:
        norms: ``[K]`` mask norms, one per class (at least 2).

    Returns:
        ``[K]`` float64 anomaly indices.

    Example:
        >>> # median 3; deviations 2, 1, 0, 1, 97 whose median is 1: indices = deviation / 1.4826
        >>> [round(v, 3) for v in anomaly_index(torch.tensor([1.0, 2.0, 3.0, 4.0, 100.0])).tolist()]
        [1.349, 0.674, 0.0, 0.674, 65.426]

    """
    if norms.dim() != 1 or norms.numel() < 2:
        raise InputError(
            f"anomaly_index needs a 1-d tensor of >= 2 norms (got {tuple(norms.shape)})"
        )
    values = norms.double()
    deviation = (values - _median(values)).abs()
    mad = MAD_CONSISTENCY * _median(deviation)
    if mad == 0:
        return torch.zeros_like(values)
    return deviation / mad


def flag_outliers(norms: torch.Tensor, threshold: float = 2.0) -> torch.Tensor:
    """Classes whose norm lies below the median with an anomaly index above ``threshold``.

    Only small norms count: a backdoor makes its target's trigger easier to find, never harder.

    Example:
        >>> flag_outliers(torch.tensor([40.0, 42.0, 38.0, 41.0, 5.0])).tolist()
        [False, False, False, False, True]

    """
    check_number("threshold", threshold)
    values = norms.double()
    return (values < _median(values)) & (anomaly_index(values) > threshold)


def mask_iou(mask: torch.Tensor, true_mask: torch.Tensor, threshold: float = 0.5) -> float:
    """Intersection over union of a reversed mask, binarised, with the true trigger's patch.

    The mask is binarised at ``threshold`` times its maximum: the pixels carrying at least half
    the strongest pixel's weight (by default) form the reversed patch.

    Args:
        mask: ``[H, W]`` reversed mask in [0, 1].
        true_mask: ``[H, W]`` bool, True on the planted patch.
        threshold: fraction of the mask's maximum a pixel needs to count, in (0, 1].

    Example:
        >>> truth = torch.zeros(4, 4, dtype=torch.bool)
        >>> truth[:2, :2] = True
        >>> reversed_mask = torch.zeros(4, 4)
        >>> reversed_mask[:2, :1] = 0.9
        >>> reversed_mask[3, 3] = 0.1
        >>> mask_iou(reversed_mask, truth)
        0.5

    """
    check_fraction("threshold", threshold, open_low=True)
    if mask.shape != true_mask.shape:
        raise InputError(
            f"the mask {tuple(mask.shape)} and the true patch {tuple(true_mask.shape)} must have "
            "the same shape"
        )
    peak = float(mask.max())
    found = mask >= threshold * peak if peak > 0 else torch.zeros_like(true_mask)
    truth = true_mask.to(found.device).bool()
    union = int((found | truth).sum())
    return int((found & truth).sum()) / union if union else 0.0


@dataclass(frozen=True, kw_only=True)
class ReversedTriggers:
    """What Neural Cleanse found: one reversed trigger per class and the outlier test on them.

    Attributes:
        masks: ``[K, H, W]`` masks in [0, 1] (the smallest of each class that reached the
            success threshold; the last one for a class that never did).
        patterns: ``[K, C, H, W]`` patterns in [0, 1].
        l1: ``[K]`` L1 norm of each mask.
        success: ``[K]`` fraction of the clean samples (not already of class k) that the reversed
            trigger sends to class k.
        anomaly: ``[K]`` anomaly index of each mask's L1 norm.
        flagged: ``[K]`` bool, the outliers (norm below the median, index above the threshold).
        threshold: the anomaly-index threshold used.

    """

    masks: torch.Tensor
    patterns: torch.Tensor
    l1: torch.Tensor
    success: torch.Tensor
    anomaly: torch.Tensor
    flagged: torch.Tensor
    threshold: float

    @property
    def flagged_classes(self) -> list[int]:
        """The flagged classes, ascending."""
        return [int(k) for k in self.flagged.nonzero().flatten()]


@dataclass(frozen=True, kw_only=True)
class NeuralCleanse:
    """Hyperparameters of Neural Cleanse's trigger reverse-engineering (Wang et al. 2019).

    Args:
        steps: optimisation steps (each one batch, all classes at once).
        lr: Adam learning rate on the squashed mask and pattern parameters.
        init_cost: starting weight of the mask's L1 norm in the loss.
        batch_size: clean samples per step (each class stamps the same ones).
        patience: steps of success (or failure) before the cost rises (or falls).
        success_threshold: attack success rate a mask must reach to count as a trigger.
        cost_multiplier: the cost is multiplied by it after ``patience`` successful steps and
            divided by its 1.5th power after ``patience`` failing ones (the paper's 1.5).
        anomaly_threshold: the anomaly index above which a class is flagged (the paper's 2).
        seed: seeds the initial masks and patterns and the batch order.

    Example:
        >>> NeuralCleanse(steps=10).steps
        10

    """

    steps: int = 300
    lr: float = 0.1
    init_cost: float = 1e-3
    batch_size: int = 32
    patience: int = 10
    success_threshold: float = 0.99
    cost_multiplier: float = 1.5
    anomaly_threshold: float = 2.0
    seed: int = 0

    def __post_init__(self) -> None:
        check_count("steps", self.steps)
        check_count("batch_size", self.batch_size)
        check_count("patience", self.patience)
        check_number("lr", self.lr)
        check_number("init_cost", self.init_cost, zero=True)
        check_number("anomaly_threshold", self.anomaly_threshold)
        check_fraction("success_threshold", self.success_threshold, open_low=True)
        check_number("cost_multiplier", self.cost_multiplier)
        if self.cost_multiplier <= 1:
            raise InputError(f"cost_multiplier must be > 1 (got {self.cost_multiplier!r})")
        check_seed(self.seed)

    def config(self) -> dict[str, Any]:
        """The hyperparameters as a plain dict (for reports)."""
        return asdict(self)

    def reverse(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor | None = None,
        *,
        stage: Stage | None = None,
    ) -> ReversedTriggers:
        """Reverse-engineer a trigger for every class of ``model`` from clean inputs ``x``.

        Args:
            model: a classifier returning logits ``[B, K]`` for inputs in [0, 1].
            x: clean inputs ``[N, C, H, W]`` in [0, 1] (on any device; moved to the model's).
            y: their labels ``[N]``, optional: when given, a class's attack success is measured
                on the samples of other classes only.
            stage: a progress stage advanced once per step.

        Returns:
            The reversed triggers, their norms and the outlier test (:class:`ReversedTriggers`).

        """
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise InputError(f"x must be a float tensor of images [N, C, H, W] (got {shape})")
        if x.shape[0] == 0:
            raise InputError("x must hold at least one image")
        device = _model.device_of(model)
        x = x.to(device=device, dtype=_model.compute_dtype(model, x))
        if y is not None and y.shape != (x.shape[0],):
            raise InputError(f"y must have shape [{x.shape[0]}] (got {tuple(y.shape)})")
        with _model.frozen(model):
            with torch.no_grad():
                probe = run_model(model, x[:1])
            if probe.dim() != 2 or probe.shape[1] < 2:
                raise InputError(
                    f"the model must return logits [batch, classes >= 2] (got {tuple(probe.shape)})"
                )
            masks, patterns = self._optimise(model, x, probe.shape[1], stage)
            success = _success(model, x, y, masks, patterns, self.batch_size)
        l1 = masks.flatten(1).sum(1).double()
        return ReversedTriggers(
            masks=masks.cpu(),
            patterns=patterns.cpu(),
            l1=l1.cpu(),
            success=success.cpu(),
            anomaly=anomaly_index(l1).cpu(),
            flagged=flag_outliers(l1, self.anomaly_threshold).cpu(),
            threshold=self.anomaly_threshold,
        )

    def _optimise(
        self, model: nn.Module, x: torch.Tensor, classes: int, stage: Stage | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The optimisation loop: Adam on all classes' parameters, the paper's cost schedule."""
        n, channels, height, width = x.shape
        device = x.device
        generator = torch.Generator().manual_seed(self.seed)
        init = torch.rand(classes, 1 + channels, height, width, generator=generator)
        # atanh of a uniform draw in (0.2, 0.8) on the [0, 1] scale, as the squash is tanh.
        raw = torch.atanh((init * 0.6 + 0.2) * 2 - 1).to(device=device, dtype=x.dtype)
        mask_param = raw[:, :1].clone().requires_grad_(True)
        pattern_param = raw[:, 1:].clone().requires_grad_(True)
        optimizer = torch.optim.Adam([mask_param, pattern_param], lr=self.lr, betas=(0.5, 0.9))
        state = _Schedule.start(classes, self.init_cost, height, width, channels, device)
        target = torch.arange(classes, device=device).repeat_interleave(min(self.batch_size, n))
        order = torch.randperm(n, generator=generator)
        cursor = 0
        for _ in range(self.steps):
            if cursor + self.batch_size > n:
                order, cursor = torch.randperm(n, generator=generator), 0
            batch = x[order[cursor : cursor + self.batch_size].to(device)]
            cursor += self.batch_size
            mask = (torch.tanh(mask_param) + 1) / 2
            pattern = (torch.tanh(pattern_param) + 1) / 2
            stamped = (1 - mask[:, None]) * batch[None] + (mask * pattern)[:, None]
            logits = model(stamped.flatten(0, 1))
            ce = F.cross_entropy(logits, target, reduction="none").view(classes, -1).mean(1)
            l1 = mask.flatten(1).sum(1)
            optimizer.zero_grad(set_to_none=True)
            (ce + state.cost * l1).sum().backward()
            optimizer.step()
            hits = (logits.detach().argmax(1) == target).view(classes, -1).float().mean(1)
            state.update(self, hits, l1.detach(), mask.detach()[:, 0], pattern.detach())
            if stage is not None:
                stage.advance(1)
        final_mask = ((torch.tanh(mask_param) + 1) / 2).detach()[:, 0]
        final_pattern = ((torch.tanh(pattern_param) + 1) / 2).detach()
        return state.result(final_mask, final_pattern)


@dataclass
class _Schedule:
    """Per-class cost, its up/down counters and the best (smallest successful) trigger so far."""

    cost: torch.Tensor
    up: torch.Tensor
    down: torch.Tensor
    best_l1: torch.Tensor
    best_mask: torch.Tensor
    best_pattern: torch.Tensor

    @classmethod
    def start(
        cls, classes: int, cost: float, height: int, width: int, channels: int, device: Any
    ) -> _Schedule:
        zeros = torch.zeros(classes, device=device)
        return cls(
            cost=torch.full((classes,), float(cost), device=device),
            up=zeros.clone(),
            down=zeros.clone(),
            best_l1=torch.full((classes,), float("inf"), device=device),
            best_mask=torch.zeros(classes, height, width, device=device),
            best_pattern=torch.zeros(classes, channels, height, width, device=device),
        )

    def update(
        self,
        method: NeuralCleanse,
        hits: torch.Tensor,
        l1: torch.Tensor,
        mask: torch.Tensor,
        pattern: torch.Tensor,
    ) -> None:
        """One step of the paper's schedule, in tensor ops (no host synchronisation)."""
        success = hits >= method.success_threshold
        better = success & (l1 < self.best_l1)
        self.best_l1 = torch.where(better, l1, self.best_l1)
        self.best_mask = torch.where(better[:, None, None], mask, self.best_mask)
        self.best_pattern = torch.where(better[:, None, None, None], pattern, self.best_pattern)
        self.up = torch.where(success, self.up + 1, torch.zeros_like(self.up))
        self.down = torch.where(success, torch.zeros_like(self.down), self.down + 1)
        raise_cost = self.up >= method.patience
        lower_cost = self.down >= method.patience
        factor = torch.where(raise_cost, method.cost_multiplier, 1.0)
        factor = torch.where(lower_cost, method.cost_multiplier**-1.5, factor)
        self.cost = self.cost * factor
        self.up = torch.where(raise_cost, torch.zeros_like(self.up), self.up)
        self.down = torch.where(lower_cost, torch.zeros_like(self.down), self.down)

    def result(
        self, final_mask: torch.Tensor, final_pattern: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The best trigger of each class, or the final one where none reached the threshold."""
        found = torch.isfinite(self.best_l1)
        mask = torch.where(found[:, None, None], self.best_mask, final_mask)
        pattern = torch.where(found[:, None, None, None], self.best_pattern, final_pattern)
        return mask, pattern


@torch.no_grad()
def _success(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None,
    masks: torch.Tensor,
    patterns: torch.Tensor,
    batch_size: int,
) -> torch.Tensor:
    """Each class's reversed-trigger success on ``x`` (samples of other classes when ``y``)."""
    classes = masks.shape[0]
    hits = torch.zeros(classes, device=x.device, dtype=torch.float64)
    counts = torch.zeros(classes, device=x.device, dtype=torch.float64)
    own = torch.arange(classes, device=x.device)
    labels = None if y is None else y.to(x.device)
    for start in range(0, x.shape[0], batch_size):
        batch = x[start : start + batch_size]
        stamped = (1 - masks[:, None, None]) * batch[None] + (masks[:, None] * patterns)[:, None]
        predicted = model(stamped.flatten(0, 1)).argmax(1).view(classes, -1)
        keep = torch.ones_like(predicted, dtype=torch.bool)
        if labels is not None:
            keep = labels[start : start + batch_size][None] != own[:, None]
        hits += ((predicted == own[:, None]) & keep).sum(1)
        counts += keep.sum(1)
    return hits / counts.clamp(min=1)
