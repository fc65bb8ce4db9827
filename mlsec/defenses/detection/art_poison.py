"""ART's poison detectors on the user's training data: spectral signatures, activation clustering.

Both run through the Adversarial Robustness Toolbox (not rewritten): ``SpectralSignatureDefense``
(Tran et al. 2018) flags, in every class, the samples with the largest projection of their
representation on its top singular vector; ``ActivationDefence`` (Chen et al. 2018) splits each
class's representations in two clusters and, with ART's ``silhouette-scores`` analysis, flags the
small cluster of a class whose two clusters separate well. ART reads the representation from the
last child of the ``nn.Sequential`` it is handed: for a model that is itself an ``nn.Sequential``
ending in a linear layer it gets the penultimate layer (what both papers use), for any other model
the logits.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from mlsec.attacks.art.estimator import cuda_device, seeded
from mlsec.core import model as _model
from mlsec.core.validation import check_count, check_fraction, check_seed
from mlsec.errors import InputError

__all__ = ["DETECTORS", "PoisonFindings", "detect_poison", "representation"]

DETECTORS = ("spectral-signature", "activation-clustering")


@dataclass(frozen=True, kw_only=True)
class PoisonFindings:
    """What one ART detector flagged in the training data.

    Attributes:
        detector: ``"spectral-signature"`` or ``"activation-clustering"``.
        layer: the representation ART read: ``"penultimate"`` or ``"logits"``.
        flagged: bool ``[N]``, the samples the detector suspects.
        per_class: ``{class: (flagged, samples)}`` over the labels given.
        suspect_classes: classes holding a share of the flagged samples far above their share of
            the data (flagged fraction above ``concentration`` times the overall one).

    """

    detector: str
    layer: str
    flagged: torch.Tensor
    per_class: dict[int, tuple[int, int]]
    suspect_classes: list[int]

    @property
    def count(self) -> int:
        """Samples flagged."""
        return int(self.flagged.sum())

    @property
    def fraction(self) -> float:
        """Fraction of the samples flagged."""
        return self.count / max(self.flagged.numel(), 1)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (no per-sample flags)."""
        return {
            "detector": self.detector,
            "layer": self.layer,
            "flagged": self.count,
            "fraction": self.fraction,
            "per_class": [
                {"class": k, "flagged": f, "samples": n, "fraction": f / max(n, 1)}
                for k, (f, n) in sorted(self.per_class.items())
            ],
            "suspect_classes": list(self.suspect_classes),
        }


def representation(model: nn.Module) -> tuple[nn.Sequential, str]:
    """The ``nn.Sequential`` whose last child's output ART reads, and which layer that is."""
    if isinstance(model, nn.Sequential) and len(model) >= 2 and isinstance(model[-1], nn.Linear):
        return nn.Sequential(model[:-1]), "penultimate"
    return nn.Sequential(model), "logits"


def detect_poison(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    classes: int,
    expected_poison: float = 0.33,
    concentration: float = 2.0,
    batch_size: int = 128,
    seed: int = 0,
) -> list[PoisonFindings]:
    """Run ART's two poison detectors on the training data ``(x, y)`` of ``model``.

    Args:
        model: the classifier trained on ``(x, y)``.
        x: training inputs ``[N, ...]``.
        y: their (possibly poisoned) labels ``[N]`` in ``[0, classes)``.
        classes: the model's number of classes.
        expected_poison: the spectral signature's bound on the poisoned fraction of a class; it
            flags ``1.5 x`` that fraction of every class.
        concentration: a class is suspect when its flagged fraction exceeds this multiple of the
            overall flagged fraction.
        batch_size: samples per forward pass.
        seed: seeds numpy's generator for ART's clustering.

    Returns:
        One :class:`PoisonFindings` per detector, in :data:`DETECTORS` order.

    """
    check_fraction("expected_poison", expected_poison, open_low=True)
    check_count("batch_size", batch_size)
    check_seed(seed)
    if concentration <= 1:
        raise InputError(f"concentration must be > 1 (got {concentration!r})")
    labels = _check_training(x, y, classes)
    net, layer = representation(model)
    device = _model.device_of(model)
    onehot = np.eye(classes, dtype=np.float32)[labels]
    inputs = x.detach().float().cpu().numpy()
    found = []
    with _model.frozen(model), seeded(seed, device), cuda_device(device):
        for name, flags in _run_detectors(
            net, inputs, onehot, classes, expected_poison, batch_size
        ):
            found.append(_findings(name, layer, flags, labels, classes, concentration))
    return found


def _check_training(x: torch.Tensor, y: torch.Tensor, classes: int) -> np.ndarray:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 2:
        raise InputError("the training data must be float inputs [N, ...] with labels [N]")
    if not isinstance(y, torch.Tensor) or y.dtype.is_floating_point or y.shape != (x.shape[0],):
        raise InputError(f"the training labels must be integers of shape [{x.shape[0]}]")
    if x.shape[0] < 2 * classes:
        raise InputError(
            f"the training data holds {x.shape[0]} samples; the poison detectors need at least "
            f"2 per class ({2 * classes})"
        )
    labels = y.cpu().numpy().astype(np.int64)
    if labels.min() < 0 or labels.max() >= classes:
        raise InputError(
            f"the training labels lie in [{labels.min()}, {labels.max()}] but the model has "
            f"{classes} outputs"
        )
    return labels


def _run_detectors(
    net: nn.Sequential,
    x: np.ndarray,
    onehot: np.ndarray,
    classes: int,
    expected_poison: float,
    batch_size: int,
) -> Iterator[tuple[str, np.ndarray]]:
    """Each detector's name and its bool flags, through ART."""
    from art.defences.detector.poison import (  # optional: ART, on first use
        ActivationDefence,
        SpectralSignatureDefense,
    )
    from art.estimators.classification import PyTorchClassifier

    device = _model.device_of(net)
    classifier = PyTorchClassifier(
        model=net,
        loss=nn.CrossEntropyLoss(),
        input_shape=tuple(x.shape[1:]),
        nb_classes=classes,
        device_type="gpu" if device.type == "cuda" else "cpu",
    )
    spectral = SpectralSignatureDefense(
        classifier, x, onehot, expected_pp_poison=expected_poison, batch_size=batch_size
    )
    _, clean = spectral.detect_poison()
    yield "spectral-signature", np.asarray(clean) == 0
    clustering = ActivationDefence(classifier, x, onehot)
    _, clean = clustering.detect_poison(
        nb_clusters=2, nb_dims=10, reduce="PCA", cluster_analysis="silhouette-scores"
    )
    flags = np.asarray(clean) == 0
    yield "activation-clustering", _small_clusters(flags, onehot.argmax(1), clustering)


def _small_clusters(flags: np.ndarray, labels: np.ndarray, clustering: Any) -> np.ndarray:
    """In each class ART's analysis finds suspicious, only the smaller of its two clusters.

    ART 1.20's silhouette analysis means to flag the small cluster of a suspicious class, but its
    clean-cluster assignment is inverted and every sample of the class comes back flagged; the
    clusters themselves (``clusters_by_class``) are right, so the small one is read from them.
    """
    out = flags.copy()
    for k, clusters in enumerate(clustering.clusters_by_class):
        members = np.flatnonzero(labels == k)
        if len(members) == 0 or not flags[members].any():
            continue
        assigned = np.asarray(clusters)
        smaller = int(np.argmin(np.bincount(assigned, minlength=2)))
        out[members] = assigned == smaller
    return out


def _findings(
    name: str,
    layer: str,
    flags: np.ndarray,
    labels: np.ndarray,
    classes: int,
    concentration: float,
) -> PoisonFindings:
    flagged = torch.from_numpy(flags.astype(bool))
    per_class = {
        k: (int(flags[labels == k].sum()), int((labels == k).sum())) for k in range(classes)
    }
    overall = flags.mean() if flags.size else 0.0
    suspects = [
        k for k, (f, n) in per_class.items() if f > 0 and n > 0 and f / n > concentration * overall
    ]
    return PoisonFindings(
        detector=name, layer=layer, flagged=flagged, per_class=per_class, suspect_classes=suspects
    )
