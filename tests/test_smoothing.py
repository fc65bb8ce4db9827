"""Randomized smoothing (CERTIFY, PREDICT, the soft smoothed classifier) and Gaussian training."""

from __future__ import annotations

import statistics
from importlib import resources
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load as load_safetensors
from scipy import stats
from torch import nn

import mlsec
from mlsec.core.keyed import SampleKeys, drawing_for
from mlsec.defenses.certified.smoothing import Certificate, SmoothedClassifier, Smoothing
from mlsec.defenses.training.gaussian import GaussianTraining
from mlsec.defenses.training.methods import METHODS
from mlsec.errors import InputError

Data = tuple[torch.Tensor, torch.Tensor]
SMOOTH_WEIGHTS = resources.files("mlsec.zoo").joinpath("weights/mnist_cnn_smooth.safetensors")


@pytest.fixture(scope="module")
def data() -> Data:
    return mlsec.datasets.mnist_sample()


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return mlsec.zoo.load("mnist-cnn")


class Constant(nn.Module):
    """Always answers ``label`` (logits one-hot), whatever the input."""

    def __init__(self, label: int, classes: int = 10) -> None:
        super().__init__()
        self.label = label
        self.classes = classes
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(x.shape[0], self.classes, dtype=x.dtype, device=x.device)
        out[:, self.label] = 1.0
        return out * self.scale


class Uniform(nn.Module):
    """Answers a uniformly random class of 10, independently of the input (a torch generator)."""

    def __init__(self) -> None:
        super().__init__()
        self.generator = torch.Generator().manual_seed(1234)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.rand(x.shape[0], 10, generator=self.generator).to(x.dtype)


class Recorder(nn.Module):
    """Wraps a model and records the batch size of every forward pass."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(x.shape[0])
        out: torch.Tensor = self.inner(x)
        return out


# ---- statistics -------------------------------------------------------------------------------


def test_lower_bound_is_scipys_exact_clopper_pearson(model: nn.Module, data: Data) -> None:
    x, _ = data
    smoothing = Smoothing(sigma=0.5, n0=20, n=300, alpha=0.01, batch_size=256)
    cert = smoothing.certify(model, x[:8])
    top = smoothing.counts(model, x[:8], 20, stream="smoothing/select").argmax(1)
    counted = smoothing.counts(model, x[:8], 300)
    hits = counted.gather(1, top.unsqueeze(1)).squeeze(1).tolist()
    assert min(hits) < 300  # sigma 0.5 moves some copies: not only the all-hits corner case
    for row, k in enumerate(hits):
        # Two-sided exact interval at level 1 - 2 alpha: its lower end is the one-sided bound.
        interval = stats.binomtest(k, 300).proportion_ci(confidence_level=0.98, method="exact")
        assert float(cert.p_lower[row]) == pytest.approx(interval.low, rel=1e-9, abs=1e-12)
        if interval.low >= 0.5:
            expected = 0.5 * statistics.NormalDist().inv_cdf(interval.low)
            assert float(cert.radius[row]) == pytest.approx(expected, rel=1e-9)
            assert int(cert.prediction[row]) == int(top[row])
        else:
            assert int(cert.prediction[row]) == -1 and float(cert.radius[row]) == 0.0


@pytest.mark.parametrize(("n", "alpha", "sigma"), [(100, 0.001, 0.25), (1000, 0.05, 0.5)])
def test_constant_model_gets_the_closed_form_bound(n: int, alpha: float, sigma: float) -> None:
    x = torch.rand(3, 1, 4, 4)
    cert = Smoothing(sigma=sigma, n0=10, n=n, alpha=alpha, batch_size=64).certify(Constant(3), x)
    # All n draws hit: Beta(alpha; n, 1) = alpha ** (1 / n).
    p_lower = alpha ** (1 / n)
    assert isinstance(cert, Certificate) and cert.prediction.tolist() == [3, 3, 3]
    assert cert.p_lower.dtype == torch.float64 and cert.radius.dtype == torch.float64
    assert torch.allclose(cert.p_lower, torch.full((3,), p_lower, dtype=torch.float64), rtol=1e-9)
    radius = sigma * statistics.NormalDist().inv_cdf(p_lower)
    assert torch.allclose(cert.radius, torch.full((3,), radius, dtype=torch.float64), rtol=1e-9)
    assert cert.certified(torch.tensor([3, 3, 4]), radius).tolist() == [True, True, False]
    assert not cert.certified(torch.tensor([3, 3, 3]), radius * 1.01).any()


def test_uniform_random_model_abstains() -> None:
    x = torch.rand(4, 1, 4, 4)
    smoothing = Smoothing(sigma=0.25, n0=50, n=500, batch_size=500)
    cert = smoothing.certify(Uniform(), x)
    assert cert.prediction.tolist() == [-1] * 4
    assert cert.radius.tolist() == [0.0] * 4
    assert (cert.p_lower < 0.2).all()  # pA is 0.1
    assert smoothing.predict(Uniform(), x).tolist() == [-1] * 4


def test_predict_answers_a_clear_majority_and_follows_the_binomial_test() -> None:
    x = torch.rand(2, 1, 4, 4)
    assert Smoothing(sigma=0.25, n=20).predict(Constant(7), x).tolist() == [7, 7]
    # nA = n, nB = 0: the p-value is 2 * 0.5**n, above alpha = 0.001 for n = 10 (0.00195).
    assert Smoothing(sigma=0.25, n=10).predict(Constant(7), x).tolist() == [-1, -1]
    assert Smoothing(sigma=0.25, n=11).predict(Constant(7), x).tolist() == [7, 7]


# ---- keyed, seeded, batched -------------------------------------------------------------------


def test_counts_sum_to_num_and_respect_batch_size(model: nn.Module, data: Data) -> None:
    x, _ = data
    recorder = Recorder(model)
    counts = Smoothing(sigma=0.25, batch_size=64).counts(recorder, x[:5], 150)
    assert counts.dtype == torch.int64 and counts.shape == (5, 10)
    assert counts.sum(1).tolist() == [150] * 5
    assert max(recorder.sizes) <= 64
    # Chunks of 64 copies, one row per pass: ceil(150 / 64) = 3 passes per row.
    assert len(recorder.sizes) == 15
    recorder.sizes.clear()
    Smoothing(sigma=0.25, batch_size=1000).counts(recorder, x[:25], 100)
    assert recorder.sizes == [1000, 1000, 500]  # ten rows of 100 copies share a pass


def test_certificate_of_a_sample_does_not_depend_on_its_batch(model: nn.Module, data: Data) -> None:
    x, _ = data
    smoothing = Smoothing(sigma=0.5, n0=30, n=200, batch_size=128)
    index = torch.arange(100, 106)
    together = smoothing.certify(model, x[100:106], index=index)
    for row in (0, 3, 5):
        alone = smoothing.certify(model, x[100 + row : 101 + row], index=index[row : row + 1])
        assert int(alone.prediction[0]) == int(together.prediction[row])
        assert float(alone.p_lower[0]) == float(together.p_lower[row])
    counts = smoothing.counts(model, x[100:106], 200, index=index)
    again = smoothing.counts(model, x[103:104], 200, index=index[3:4])
    assert torch.equal(counts[3], again[0])


def test_same_seed_same_result_other_seed_other_counts(model: nn.Module, data: Data) -> None:
    x, _ = data
    first = Smoothing(sigma=0.5, n=300, seed=1)
    counts = first.counts(model, x[:20], 300)
    assert torch.equal(counts, Smoothing(sigma=0.5, n=300, seed=1).counts(model, x[:20], 300))
    other = Smoothing(sigma=0.5, n=300, seed=2).counts(model, x[:20], 300)
    assert not torch.equal(counts, other)
    # Select and estimate draw from different streams.
    assert not torch.equal(counts, first.counts(model, x[:20], 300, stream="smoothing/select"))


# ---- the soft smoothed classifier -------------------------------------------------------------


def test_smoothed_is_a_differentiable_distribution(model: nn.Module, data: Data) -> None:
    x, _ = data
    soft = Smoothing(sigma=0.25).smoothed(model, samples=8)
    assert isinstance(soft, SmoothedClassifier) and soft.base is model
    assert {id(p) for p in soft.parameters()} == {id(p) for p in model.parameters()}
    leaf = x[:4].clone().requires_grad_(True)
    out = soft(leaf)
    assert out.shape == (4, 10)
    assert torch.allclose(out.exp().sum(1), torch.ones(4), atol=1e-5)
    out[torch.arange(4), torch.tensor([0, 1, 2, 3])].sum().backward()
    assert leaf.grad is not None and leaf.grad.abs().sum() > 0


def test_smoothed_draws_fresh_sample_keyed_noise(model: nn.Module, data: Data) -> None:
    x, _ = data
    soft = Smoothing(sigma=0.5).smoothed(model, samples=4)
    keys = SampleKeys.of(7, torch.tensor([10, 11, 12]))
    with torch.no_grad():
        with drawing_for(keys, 0):
            call0 = soft(x[10:13])
        with drawing_for(keys, 1):
            call1 = soft(x[10:13])
        with drawing_for(keys, 0):
            again = soft(x[10:13])
        with drawing_for(keys.select(torch.tensor([1])), 1):
            alone = soft(x[11:12])
        plain = soft(x[:3]), soft(x[:3])
    assert not torch.allclose(call0, call1)
    assert torch.equal(call0, again)
    assert torch.allclose(alone[0], call1[1], atol=1e-6)
    assert not torch.allclose(*plain)  # outside an attack, a call counter keys the noise
    with drawing_for(keys, 0), pytest.raises(InputError, match="keyed 3 rows"):
        soft(x[:2])


# ---- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "name"),
    [
        ({"sigma": 0.0}, "sigma"),
        ({"sigma": -1.0}, "sigma"),
        ({"sigma": 0.25, "n0": 0}, "n0"),
        ({"sigma": 0.25, "n": 0}, "n"),
        ({"sigma": 0.25, "alpha": 0.0}, "alpha"),
        ({"sigma": 0.25, "alpha": 1.5}, "alpha"),
        ({"sigma": 0.25, "batch_size": 0}, "batch_size"),
    ],
)
def test_bad_settings_are_one_line_errors(settings: dict[str, Any], name: str) -> None:
    with pytest.raises(InputError) as caught:
        Smoothing(**settings)
    message = str(caught.value)
    assert message.startswith(f"{name} must") and "\n" not in message


def test_bad_calls_are_one_line_errors(model: nn.Module, data: Data) -> None:
    x, _ = data
    smoothing = Smoothing(sigma=0.25, n0=5, n=10)
    with pytest.raises(InputError, match=r"^num must be an integer >= 1"):
        smoothing.counts(model, x[:2], 0)
    with pytest.raises(InputError, match=r"^index must have shape \[2\]"):
        smoothing.certify(model, x[:2], index=torch.arange(3))
    with pytest.raises(InputError, match="at least two classes"):
        smoothing.certify(Constant(0, classes=1), x[:2])
    with pytest.raises(InputError, match=r"^n must be an integer >= 1"):
        smoothing.predict(model, x[:2], n=0)
    with pytest.raises(InputError, match=r"^samples must be an integer >= 1"):
        smoothing.smoothed(model, samples=0)


def test_empty_batch_gives_empty_answers(model: nn.Module, data: Data) -> None:
    x, _ = data
    smoothing = Smoothing(sigma=0.25, n0=5, n=10)
    cert = smoothing.certify(model, x[:0])
    assert cert.prediction.shape == (0,) and cert.prediction.dtype == torch.int64
    assert cert.radius.shape == (0,) and cert.p_lower.dtype == torch.float64
    assert smoothing.predict(model, x[:0]).shape == (0,)


# ---- Gaussian data augmentation ---------------------------------------------------------------


def test_gaussian_training_is_registered_and_validated() -> None:
    assert METHODS.get("gaussian") is GaussianTraining
    method = GaussianTraining(eps=0.5)
    assert method.norm == "l2" and method.sigma == 0.25
    for sigma in (0.0, -0.5):
        with pytest.raises(InputError, match=r"^sigma must be a number > 0") as caught:
            GaussianTraining(eps=0.5, sigma=sigma)
        assert "\n" not in str(caught.value)


def test_gaussian_loss_is_cross_entropy_on_keyed_noise(model: nn.Module, data: Data) -> None:
    x, y = data
    method = GaussianTraining(eps=0.5, sigma=0.3)
    index = torch.tensor([4, 9, 17, 30])
    loss, logits = method.training_loss(model, x[:4], y[:4], eps=0.5, seed=11, index=index)
    noise = SampleKeys.of(11, index).normal((1, 28, 28), stream="training/gaussian")
    direct = model(x[:4] + 0.3 * noise)
    assert torch.allclose(logits, direct, atol=1e-6)
    assert float(loss.detach()) == pytest.approx(float(F.cross_entropy(direct, y[:4])), rel=1e-6)
    assert float(loss.detach()) != pytest.approx(
        float(F.cross_entropy(model(x[:4]), y[:4])), rel=1e-3
    )
    # Not clipped: the noisy input leaves [0, 1].
    noisy = x[:4] + method.noise(x[:4], seed=11, index=index)
    assert noisy.min() < 0 and noisy.max() > 1
    # Default index 0 .. B-1.
    _, default = method.training_loss(model, x[:4], y[:4], eps=0.5, seed=11)
    assert torch.allclose(
        default,
        model(
            x[:4]
            + 0.3
            * SampleKeys.of(11, torch.arange(4)).normal((1, 28, 28), stream="training/gaussian")
        ),
        atol=1e-6,
    )


def test_gaussian_noise_of_a_sample_ignores_its_batch(data: Data) -> None:
    x, _ = data
    method = GaussianTraining(eps=0.5, sigma=0.25)
    batch = method.noise(x[:5], seed=3, index=torch.tensor([50, 51, 52, 53, 54]))
    alone = method.noise(x[2:3], seed=3, index=torch.tensor([52]))
    assert torch.equal(batch[2], alone[0])
    assert float(batch.std()) == pytest.approx(0.25, rel=0.05)
    assert not torch.equal(batch, method.noise(x[:5], seed=4, index=torch.arange(50, 55)))


# ---- cross-check against ART ------------------------------------------------------------------
#
# ART's RandomizedSmoothingMixin.certify is Cohen et al.'s CERTIFY as ours: ``sample_size``
# selection draws (our n0) pick the class, ``n`` fresh draws count it, the bound is statsmodels'
# proportion_confint(k, n, alpha=2 * alpha, method="beta")[0] (the one-sided Clopper-Pearson
# bound at 1 - alpha), abstain below 1/2, radius scale * Phi^-1(bound); the noise is unclipped
# numpy noise. Two differences: ART's draws come from numpy's global generator (so the counts
# agree in distribution, not draw for draw: hence a tolerance), and statsmodels is not installed
# here, so its bound is replaced by scipy's Beta quantile, the formula statsmodels evaluates.


def _art_smoother(module: Any, base: nn.Module, *, sigma: float, n0: int, alpha: float) -> Any:
    """ART's smoothed classifier of ``base``; its lower bound from scipy (ART wants statsmodels,
    which is not installed, for the same Beta quantile)."""
    peer = module.PyTorchRandomizedSmoothing(
        model=base,
        loss=nn.CrossEntropyLoss(),
        input_shape=(1, 28, 28),
        nb_classes=10,
        device_type="cpu",
        sample_size=n0,
        scale=sigma,
        alpha=alpha,
    )
    peer._lower_confidence_bound = lambda k, total: float(stats.beta.ppf(alpha, k, total - k + 1))
    return peer


@pytest.mark.slow
def test_certified_accuracy_matches_art(data: Data) -> None:
    art_smoothing = pytest.importorskip("art.estimators.certification.randomized_smoothing")
    x, y = data[0][:200], data[1][:200]
    # The bundled Gaussian-trained base model (scripts/train_mnist_smooth.py).
    base = mlsec.zoo.architectures.mnist_cnn().eval()
    base.load_state_dict(load_safetensors(SMOOTH_WEIGHTS.read_bytes()))
    # A small n for the time budget. sigma 0.5 (twice the training noise) keeps every radius
    # checked reachable at n = 150 (all hits give radius 0.5 * Phi^-1(alpha ** (1 / n)) = 0.85)
    # and away from the all-hits cliff where both estimates are at their noisiest.
    sigma, n0, n, alpha = 0.5, 10, 150, 0.001
    # Two independent Monte Carlo estimates: over seeds 0-3 (ours and numpy's alike) their
    # counts differed by 0-6 samples at a radius, at n = 150; seed 3 differs by at most 3 (the
    # exact agreement of the algorithm is the next test's, on the same draws).
    ours = Smoothing(sigma=sigma, n0=n0, n=n, alpha=alpha, seed=3).certify(base, x)
    peer = _art_smoother(art_smoothing, base, sigma=sigma, n0=n0, alpha=alpha)
    np.random.seed(3)
    prediction, radius = peer.certify(x.numpy(), n=n, batch_size=n)
    labels = y.numpy()
    for r in (0.0, 0.25, 0.5, 0.75):
        mine = int(ours.certified(y, r).sum())
        theirs = int(np.sum((prediction == labels) & (radius >= r)))
        assert abs(mine - theirs) <= 4, (r, mine, theirs)  # 2 points of 200
    # Not trivially equal: most samples are certified at radius 0.5, some not at 0.75.
    at_half, at_three_quarters = (float(ours.certified(y, r).float().mean()) for r in (0.5, 0.75))
    assert at_half > 0.8 and at_three_quarters < at_half


@pytest.mark.slow
def test_certify_equals_art_on_the_same_draws(data: Data) -> None:
    # ART certifies one image at a time, drawing the n0 selection copies, then the n estimation
    # copies; fed our keyed draws for the same image (index i, streams "smoothing/select" and
    # "smoothing/estimate", one chunk each as n <= batch_size) it must reach our certificate
    # exactly: the same class, bound, abstentions and radius.
    art_smoothing = pytest.importorskip("art.estimators.certification.randomized_smoothing")
    x = data[0][:100]
    base = mlsec.zoo.architectures.mnist_cnn().eval()
    base.load_state_dict(load_safetensors(SMOOTH_WEIGHTS.read_bytes()))
    sigma, n0, n, alpha, seed = 0.5, 10, 150, 0.001, 5
    ours = Smoothing(sigma=sigma, n0=n0, n=n, alpha=alpha, seed=seed).certify(base, x)
    queue: list[np.ndarray] = []
    for i in range(len(x)):
        keys = SampleKeys.of(seed, torch.tensor([i]))
        for stream, count in (("smoothing/select", n0), ("smoothing/estimate", n)):
            draws = keys.normal((count, 1, 28, 28), stream=stream)[0]
            queue.append((x[i] + sigma * draws).numpy())
    peer = _art_smoother(art_smoothing, base, sigma=sigma, n0=n0, alpha=alpha)
    peer._noisy_samples = lambda x_i, n=None: queue.pop(0)
    prediction, radius = peer.certify(x.numpy(), n=n, batch_size=n)
    assert not queue
    assert prediction.tolist() == ours.prediction.tolist()
    assert np.allclose(radius, ours.radius.numpy(), rtol=1e-9, atol=0)
    assert (radius > 0.7).any() and (radius < 0.5).any()  # not all at the same count
