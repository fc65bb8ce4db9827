"""Randomized smoothing (Cohen, Rosenfeld & Kolter 2019): l2 certificates for any classifier.

The smoothed classifier ``g(x) = argmax_c P(f(x + N(0, sigma^2 I)) = c)`` of a base model ``f``
is robust within the l2 radius ``sigma * Phi^-1(pA)`` of ``x``, ``pA`` being the probability of its
top class. :meth:`Smoothing.certify` (the paper's CERTIFY) bounds ``pA`` from below with Monte
Carlo draws and a one-sided Clopper-Pearson interval, so a certificate holds with probability at
least ``1 - alpha`` over the draws; :meth:`Smoothing.predict` (PREDICT) answers ``g(x)`` or
abstains after a binomial test. Every draw is keyed by sample
(:class:`mlsec.core.keyed.SampleKeys`): a sample's certificate does not depend on the batch it is
in, and the same seed gives the same certificate on the CPU and on a GPU. The statistics are
scipy's.

:meth:`Smoothing.smoothed` is the differentiable soft smoothed classifier of Salman et al. 2019
(the log of the mean softmax over noisy copies), for attacks on the smoothed classifier.

References:
    J. Cohen, E. Rosenfeld, J. Z. Kolter. Certified Adversarial Robustness via Randomized
    Smoothing. ICML 2019. arXiv:1902.02918.

    H. Salman, G. Yang, J. Li, P. Zhang, H. Zhang, I. Razenshteyn, S. Bubeck. Provably Robust
    Deep Learning via Adversarially Trained Smoothed Classifiers. NeurIPS 2019. arXiv:1906.04584.

"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats
from torch import nn

from mlsec.core import model as model_helpers
from mlsec.core.keyed import SampleKeys, current_draw
from mlsec.core.validation import check_count, check_index, check_number, check_seed
from mlsec.errors import InputError

__all__ = ["Certificate", "SmoothedClassifier", "Smoothing", "lower_bound"]


@dataclass(frozen=True)
class Certificate:
    """CERTIFY's answer per sample.

    Attributes:
        prediction: int64 ``[B]``, the smoothed classifier's class; ``-1`` where it abstained.
        radius: float64 ``[B]``, the certified l2 radius; ``0.0`` where it abstained.
        p_lower: float64 ``[B]``, the ``1 - alpha`` lower confidence bound of ``pA``.

    """

    prediction: torch.Tensor
    radius: torch.Tensor
    p_lower: torch.Tensor

    def certified(self, y: torch.Tensor, radius: float) -> torch.Tensor:
        """Bool ``[B]``: the prediction is ``y`` and certified to at least ``radius``.

        Example:
            >>> cert = Certificate(torch.tensor([3, -1]), torch.tensor([0.6, 0.0]).double(),
            ...                    torch.tensor([0.99, 0.4]).double())
            >>> cert.certified(torch.tensor([3, 3]), 0.5).tolist()
            [True, False]

        """
        y = y.to(self.prediction.device)
        return (self.prediction == y) & (self.radius >= radius)


@dataclass(frozen=True, kw_only=True)
class Smoothing:
    """The smoothed classifier ``g(x) = argmax_c P(f(x + N(0, sigma^2 I)) = c)`` of a base model f.

    Args:
        sigma: the noise's standard deviation (in input units); the radius scales with it.
        n0: selection draws (CERTIFY picks the class with them).
        n: estimation draws (CERTIFY bounds ``pA`` and PREDICT tests with them).
        alpha: the probability that a certificate (or a PREDICT answer) is wrong.
        batch_size: noisy copies per forward pass of the base model.
        seed: keys the draws, with each sample's index.

    Example:
        >>> import mlsec
        >>> x, y = mlsec.datasets.mnist_sample()
        >>> model = mlsec.zoo.load("mnist-cnn")
        >>> cert = Smoothing(sigma=0.25, n0=10, n=200).certify(model, x[:4])
        >>> cert.prediction.tolist() == y[:4].tolist()
        True

    """

    sigma: float
    n0: int = 100
    n: int = 100_000
    alpha: float = 0.001
    batch_size: int = 1_000
    seed: int = 0

    def __post_init__(self) -> None:
        check_number("sigma", self.sigma)
        for name in ("n0", "n", "batch_size"):
            check_count(name, getattr(self, name))
        alpha = self.alpha
        ok = isinstance(alpha, int | float) and not isinstance(alpha, bool)
        if not ok or not 0 < alpha < 1:
            raise InputError(f"alpha must lie in (0, 1) (got {alpha!r})")
        check_seed(self.seed)

    def counts(
        self,
        model: nn.Module,
        x: torch.Tensor,
        num: int,
        *,
        index: torch.Tensor | None = None,
        stream: str = "smoothing/estimate",
    ) -> torch.Tensor:
        """How often the base model's top class is each class over ``num`` noisy copies.

        The copies of a sample come in chunks of ``min(batch_size, num)``, chunk ``j`` drawn at
        step ``j`` of the stream from the sample's key: the counts do not depend on the batch.
        Several samples' chunks share a forward pass when they fit in ``batch_size``.

        Args:
            model: the base classifier (put in eval mode for the duration).
            x: the samples ``[B, ...]``.
            num: noisy copies per sample.
            index: the samples' positions in their data set (default ``0 .. B-1``).
            stream: the name of the draws' stream.

        Returns:
            int64 ``[B, C]`` counts on the model's device, each row summing to ``num``.

        """
        check_count("num", num)
        device = model_helpers.device_of(model)
        keys = self._keys(x, index).to(device)
        x = x.to(device, model_helpers.compute_dtype(model, x))
        chunk = min(self.batch_size, num)
        rows = max(1, self.batch_size // chunk)
        found: torch.Tensor | None = None
        with torch.no_grad(), model_helpers.frozen(model):
            for first in range(0, x.shape[0], rows):
                xb, kb = x[first : first + rows], SampleKeys(keys.keys[first : first + rows])
                for step, start in enumerate(range(0, num, chunk)):
                    copies = min(chunk, num - start)
                    noise = kb.normal(
                        (copies, *x.shape[1:]), stream=stream, step=step, dtype=x.dtype
                    )
                    noisy = (xb.unsqueeze(1) + self.sigma * noise).flatten(0, 1)
                    logits = model(noisy)
                    if found is None:
                        found = logits.new_zeros((x.shape[0], logits.shape[1]), dtype=torch.int64)
                    top = logits.argmax(1).view(len(xb), copies)
                    found[first : first + len(xb)].scatter_add_(1, top, torch.ones_like(top))
        if found is None:  # an empty batch
            return torch.zeros(0, 0, dtype=torch.int64, device=device)
        return found

    def certify(
        self, model: nn.Module, x: torch.Tensor, *, index: torch.Tensor | None = None
    ) -> Certificate:
        """CERTIFY: the smoothed prediction and its certified l2 radius per sample.

        ``n0`` draws select the class ``cA``; ``n`` fresh draws (another stream) count it; ``pA``'s
        one-sided ``1 - alpha`` Clopper-Pearson lower bound gives the radius
        ``sigma * Phi^-1(pA_lower)``, or an abstention where the bound is below 1/2.

        Args:
            model: the base classifier.
            x: the samples ``[B, ...]``.
            index: the samples' positions in their data set (default ``0 .. B-1``).

        Returns:
            A :class:`Certificate` on ``x``'s device.

        """
        select = self.counts(model, x, self.n0, index=index, stream="smoothing/select")
        if len(select) == 0:
            empty = torch.zeros(0, dtype=torch.float64, device=x.device)
            return Certificate(empty.long(), empty, empty.clone())
        _check_classes(select)
        top = select.argmax(1)
        counted = self.counts(model, x, self.n, index=index, stream="smoothing/estimate")
        hits = counted.gather(1, top.unsqueeze(1)).squeeze(1).cpu().numpy()
        p_lower = lower_bound(hits, self.n, self.alpha)
        keep = p_lower >= 0.5
        radius = np.where(keep, self.sigma * stats.norm.ppf(np.where(keep, p_lower, 0.5)), 0.0)
        prediction = torch.where(torch.from_numpy(keep), top.cpu(), -1)
        return Certificate(
            prediction=prediction.to(x.device),
            radius=torch.from_numpy(radius).to(x.device, torch.float64),
            p_lower=torch.from_numpy(p_lower).to(x.device, torch.float64),
        )

    def predict(
        self,
        model: nn.Module,
        x: torch.Tensor,
        *,
        n: int | None = None,
        index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """PREDICT: the smoothed classifier's class per sample, ``-1`` where it abstains.

        Of ``n`` draws (default ``self.n``), the top two classes' counts ``nA`` and ``nB`` must pass
        the two-sided binomial test ``binomtest(nA, nA + nB, 1/2).pvalue <= alpha``; then the
        answer is wrong with probability at most ``alpha``.

        Returns:
            int64 ``[B]`` on ``x``'s device.

        """
        n = self.n if n is None else n
        check_count("n", n)
        counted = self.counts(model, x, n, index=index, stream="smoothing/predict")
        if len(counted) == 0:
            return torch.zeros(0, dtype=torch.int64, device=x.device)
        _check_classes(counted)
        best = counted.topk(2, dim=1)
        pairs = best.values.cpu().tolist()
        passed = [stats.binomtest(a, a + b, 0.5).pvalue <= self.alpha for a, b in pairs]
        keep = torch.tensor(passed, dtype=torch.bool, device=counted.device)
        return torch.where(keep, best.indices[:, 0], -1).to(x.device)

    def smoothed(self, model: nn.Module, *, samples: int = 16) -> SmoothedClassifier:
        """A differentiable soft smoothed classifier of ``model`` for attacks (Salman et al.).

        See :class:`SmoothedClassifier`.
        """
        check_count("samples", samples)
        return SmoothedClassifier(model, sigma=self.sigma, samples=samples, seed=self.seed)

    def _keys(self, x: torch.Tensor, index: torch.Tensor | None) -> SampleKeys:
        if not isinstance(x, torch.Tensor) or x.dim() < 1:
            raise InputError("x must be a tensor of samples [B, ...]")
        check_index(index, x.shape[0])
        if index is None:
            index = torch.arange(x.shape[0])
        return SampleKeys.of(self.seed, index)


def _check_classes(counts: torch.Tensor) -> None:
    if counts.shape[1] < 2:
        raise InputError(
            f"the model outputs {counts.shape[1]} score per sample; smoothing needs a classifier "
            "with at least two classes (logits [B, C], C >= 2)"
        )


def lower_bound(hits: np.ndarray, n: int, alpha: float) -> np.ndarray:
    """The one-sided ``1 - alpha`` Clopper-Pearson lower bound of a proportion, per count.

    ``Beta(alpha; k, n - k + 1)``, and 0 for ``k = 0``.

    Example:
        >>> round(float(lower_bound(np.array([100]), 100, 0.001)[0]), 6)  # alpha ** (1 / n)
        0.933254

    """
    hits = np.asarray(hits, dtype=np.float64)
    safe = np.maximum(hits, 1.0)
    return np.where(hits > 0, stats.beta.ppf(alpha, safe, n - hits + 1), 0.0).astype(np.float64)


class SmoothedClassifier(nn.Module):
    """The soft smoothed classifier: ``log mean_s softmax(f(x + sigma * noise_s))``, ``[B, C]``.

    Its outputs are log-probabilities, usable as logits by any attack; gradients flow through the
    ``samples`` noisy copies (Monte Carlo). Each forward pass draws fresh noise:

    - inside an mlsec attack (:func:`mlsec.core.keyed.current_draw` set), row ``r`` draws from
      the attack's key of its sample at the attack's call number;
    - otherwise from ``SampleKeys.of(seed, 0 .. B-1)`` at a step that counts this module's plain
      forward passes.

    Args:
        model: the base classifier (a submodule: ``.eval()``, ``.to()`` and ``parameters()``
            reach it).
        sigma: the noise's standard deviation.
        samples: noisy copies per row and forward pass.
        seed: keys the draws outside an attack.

    """

    def __init__(self, model: nn.Module, *, sigma: float, samples: int, seed: int = 0) -> None:
        super().__init__()
        check_number("sigma", sigma)
        check_count("samples", samples)
        self.base = model
        self.sigma = sigma
        self.samples = samples
        self.seed = seed
        self.calls = 0
        self.train(model.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Log of the mean softmax over ``samples`` noisy copies of each row."""
        batch = x.shape[0]
        draw = current_draw()
        if draw is None:
            keys = SampleKeys.of(self.seed, torch.arange(batch, device=x.device))
            step = self.calls
            self.calls += 1
        else:
            keys, step = draw.keys.to(x.device), draw.call
            if len(keys) != batch:
                raise InputError(
                    f"the attack keyed {len(keys)} rows but the smoothed classifier got {batch}: "
                    "a model in front of it must keep the batch's rows",
                    subject="keys",
                )
        noise = keys.normal(
            (self.samples, *x.shape[1:]), stream="smoothing/attack", step=step, dtype=x.dtype
        )
        noisy = (x.unsqueeze(1) + self.sigma * noise).flatten(0, 1)
        log_p = torch.log_softmax(self.base(noisy).float(), dim=1).view(batch, self.samples, -1)
        return torch.logsumexp(log_p, dim=1) - math.log(self.samples)
