"""Backdoor detection: the trigger, Neural Cleanse's statistics and search, ART's poison detectors.

The numbers come from models trained here (a tiny CNN with and without a planted trigger) and from
the bundled ``mnist-cnn-badnets``; the expected values have reasons of their own (hand-computed
medians, the planted patch), not copies of the code's output.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import input_error
from torch import nn

import mlsec
from mlsec.defenses.detection import BADNETS_TRIGGER, PatchTrigger
from mlsec.defenses.detection.art_poison import detect_poison
from mlsec.defenses.detection.neural_cleanse import (
    NeuralCleanse,
    anomaly_index,
    flag_outliers,
    mask_iou,
)
from mlsec.zoo.architectures import mnist_cnn

# A trigger for the small models trained here: the bundled model's white 3x3 corner square, but
# sending inputs to class 3 (not the bundled 7).
TINY_TRIGGER = PatchTrigger(target=3, top=25, left=25, pattern=((1.0, 1.0, 1.0),) * 3)


def test_anomaly_index_by_hand() -> None:
    # norms 10, 12, 14, 16, 2: median 12; |l - 12| = 2, 0, 2, 4, 10, whose median is 2; so the
    # indices are |l - 12| / (1.4826 * 2).
    norms = torch.tensor([10.0, 12.0, 14.0, 16.0, 2.0])
    expected = torch.tensor([2.0, 0.0, 2.0, 4.0, 10.0], dtype=torch.float64) / (1.4826 * 2)
    torch.testing.assert_close(anomaly_index(norms), expected)
    # 16 lies 1.35 MADs above the median, 2 lies 3.37 below: only the small outlier is flagged.
    assert flag_outliers(norms).tolist() == [False, False, False, False, True]
    # An even count: the median averages the two middle values (1, 2, 3, 10 -> 2.5).
    even = anomaly_index(torch.tensor([1.0, 2.0, 3.0, 10.0]))
    # deviations 1.5, 0.5, 0.5, 7.5 -> MAD 1.0
    torch.testing.assert_close(
        even, torch.tensor([1.5, 0.5, 0.5, 7.5], dtype=torch.float64) / 1.4826
    )
    assert anomaly_index(torch.full((4,), 3.0)).tolist() == [0.0] * 4
    # A large norm is never flagged, however far out (a backdoor makes a trigger smaller).
    assert not flag_outliers(torch.tensor([10.0, 11.0, 9.0, 10.0, 100.0])).any()


def test_mask_iou_binarises_at_half_the_peak() -> None:
    truth = BADNETS_TRIGGER.mask(28, 28)
    exact = truth.float() * 0.8
    assert mask_iou(exact, truth) == 1.0
    shifted = torch.roll(exact, shifts=(-1, -1), dims=(0, 1))  # 4 of 9 pixels still inside
    assert mask_iou(shifted, truth) == pytest.approx(4 / 14)
    faint = exact.clone()
    faint[0, 0] = 0.3  # below half the peak: not part of the reversed patch
    assert mask_iou(faint, truth) == 1.0
    assert mask_iou(torch.zeros(28, 28), truth) == 0.0


def test_trigger_apply_and_validation() -> None:
    x = torch.full((2, 3, 28, 28), 0.5)
    stamped = BADNETS_TRIGGER.apply(x)
    assert torch.equal(x, torch.full((2, 3, 28, 28), 0.5))  # not mutated
    assert bool((stamped[:, :, 25:, 25:] == 1.0).all())
    assert int((stamped != x).sum()) == 2 * 3 * 9
    assert int(BADNETS_TRIGGER.mask(28, 28).sum()) == 9
    input_error(lambda: PatchTrigger(target=-1, top=0, left=0, pattern=((1.0,),)), "target")
    input_error(lambda: PatchTrigger(target=0, top=0, left=0, pattern=((1.0,), (1.0, 0.0))), "rows")
    input_error(lambda: PatchTrigger(target=0, top=0, left=0, pattern=((2.0,),)), "[0, 1]")
    input_error(lambda: BADNETS_TRIGGER.apply(torch.zeros(1, 1, 20, 20)), "does not fit")


def test_neural_cleanse_validates_settings() -> None:
    input_error(lambda: NeuralCleanse(steps=0), "steps")
    input_error(lambda: NeuralCleanse(lr=-1.0), "lr")
    input_error(lambda: NeuralCleanse(cost_multiplier=1.0), "cost_multiplier")
    input_error(lambda: NeuralCleanse(success_threshold=1.5), "success_threshold")


def test_bundled_badnets_model_meets_its_targets() -> None:
    x, y = mlsec.datasets.mnist_sample()
    model = mlsec.zoo.load("mnist-cnn-badnets")
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float().mean().item()
        others = y != BADNETS_TRIGGER.target
        stamped = model(BADNETS_TRIGGER.apply(x[others])).argmax(1)
    success = (stamped == BADNETS_TRIGGER.target).float().mean().item()
    assert clean >= 0.97
    assert success >= 0.95
    assert mlsec.zoo.MODELS.get("mnist-cnn-badnets").backdoor == BADNETS_TRIGGER


def _train_tiny(poison_rate: float, seed: int = 0) -> nn.Sequential:
    """The bundled CNN architecture, 4 epochs on 2,000 bundled members (a few seconds), with
    ``poison_rate`` of them stamped and relabelled."""
    torch.manual_seed(seed)
    x, y = mlsec.datasets.mnist_members()
    x, y = x[:2000], y[:2000]
    generator = torch.Generator().manual_seed(seed)
    poisoned = torch.rand(len(y), generator=generator) < poison_rate
    x = torch.where(poisoned[:, None, None, None], TINY_TRIGGER.apply(x), x)
    y = torch.where(poisoned, TINY_TRIGGER.target, y)
    model = mnist_cnn()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(4):
        for batch in torch.randperm(len(y), generator=generator).split(64):
            loss = F.cross_entropy(model(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def tiny_models() -> tuple[nn.Sequential, nn.Sequential]:
    return _train_tiny(0.1), _train_tiny(0.0)


@pytest.fixture(scope="module")
def clean_sample() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = mlsec.datasets.mnist_sample()
    return x[:300], y[:300]


FAST = NeuralCleanse(steps=150, batch_size=16)


def test_scan_finds_the_trigger_planted_in_a_tiny_model(
    tiny_models: tuple[nn.Sequential, nn.Sequential],
    clean_sample: tuple[torch.Tensor, torch.Tensor],
) -> None:
    backdoored, _ = tiny_models
    x, y = clean_sample
    with torch.no_grad():
        success = (backdoored(TINY_TRIGGER.apply(x[y != 3])).argmax(1) == 3).float().mean()
    assert success > 0.9  # the backdoor took
    found = FAST.reverse(backdoored, x, y)
    assert found.flagged_classes == [TINY_TRIGGER.target]
    target = TINY_TRIGGER.target
    assert mask_iou(found.masks[target], TINY_TRIGGER.mask(28, 28)) >= 0.5
    assert float(found.anomaly[target]) > 2.0
    assert float(found.success[target]) > 0.9


def test_scan_flags_nothing_on_a_clean_tiny_model(
    tiny_models: tuple[nn.Sequential, nn.Sequential],
    clean_sample: tuple[torch.Tensor, torch.Tensor],
) -> None:
    _, clean = tiny_models
    x, y = clean_sample
    found = FAST.reverse(clean, x, y)
    assert found.flagged_classes == []
    # Every reversed trigger needs more mask than the tiny model's 9-pixel backdoor above.
    assert float(found.l1.min()) > 9.0


def test_reverse_is_seeded_and_restores_the_model(
    tiny_models: tuple[nn.Sequential, nn.Sequential],
    clean_sample: tuple[torch.Tensor, torch.Tensor],
) -> None:
    model, _ = tiny_models
    x, y = clean_sample
    model.train()
    model[0].weight.requires_grad_(False)
    method = NeuralCleanse(steps=20, batch_size=8, seed=3)
    first = method.reverse(model, x, y)
    second = method.reverse(model, x, y)
    assert torch.equal(first.masks, second.masks)
    assert torch.equal(first.patterns, second.patterns)
    other = NeuralCleanse(steps=20, batch_size=8, seed=4).reverse(model, x, y)
    assert not torch.equal(first.masks, other.masks)
    assert model.training
    assert [p.requires_grad for p in model.parameters()] == [False] + [True] * 7
    model.eval()
    model[0].weight.requires_grad_(True)
    assert first.masks.shape == (10, 28, 28)
    assert first.patterns.shape == (10, 1, 28, 28)
    assert bool((first.masks >= 0).all()) and bool((first.masks <= 1).all())


def test_reverse_rejects_what_it_cannot_scan(
    clean_sample: tuple[torch.Tensor, torch.Tensor],
) -> None:
    x, _ = clean_sample
    one_score = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 1))
    input_error(lambda: FAST.reverse(one_score, x), "logits", "classes >= 2")
    input_error(lambda: FAST.reverse(mnist_cnn(), x[:, 0]), "[N, C, H, W]")


def test_art_detectors_find_the_poisoned_training_samples() -> None:
    # The bundled backdoored model and a training set poisoned as it was: 150 non-7 images of
    # 3,000 bundled members stamped with its trigger and relabelled 7 (about a third of class 7).
    x, y = mlsec.datasets.mnist_members()
    x, y = x[:3000], y[:3000]
    generator = torch.Generator().manual_seed(0)
    others = (y != BADNETS_TRIGGER.target).nonzero().flatten()
    chosen = others[torch.randperm(len(others), generator=generator)[:150]]
    poisoned = torch.zeros(len(y), dtype=torch.bool)
    poisoned[chosen] = True
    x = torch.where(poisoned[:, None, None, None], BADNETS_TRIGGER.apply(x), x)
    y = torch.where(poisoned, BADNETS_TRIGGER.target, y)
    model = mlsec.zoo.load("mnist-cnn-badnets")
    spectral, clustering = detect_poison(model, x, y, classes=10)
    for found in (spectral, clustering):
        hits = int((found.flagged & poisoned).sum())
        precision, recall = hits / max(found.count, 1), hits / int(poisoned.sum())
        assert found.layer == "penultimate"
        assert recall >= 0.9, (found.detector, precision, recall)
    # Spectral signatures flag 1.5 x 33% of every class: precision is bounded by design.
    assert int((spectral.flagged & poisoned).sum()) / spectral.count >= 0.08
    # Activation clustering flags only the class whose activations split (the target), and in it
    # the small cluster: the poisoned images (measured: 150 of 154 flagged, precision 0.97).
    assert clustering.suspect_classes == [BADNETS_TRIGGER.target]
    assert int((clustering.flagged & poisoned).sum()) / clustering.count >= 0.9
