"""Backdoor detection: Neural Cleanse trigger reverse-engineering and ART's poison detectors.

:class:`NeuralCleanse` (Wang et al. 2019) reverse-engineers a minimal trigger per class and flags
the classes whose trigger is anomalously small; :func:`detect_poison` runs ART's spectral-signature
and activation-clustering detectors on a model's training data; :class:`PatchTrigger` is a planted
patch trigger (:data:`BADNETS_TRIGGER`, the one in the bundled ``mnist-cnn-badnets``).
"""

from mlsec.defenses.detection.art_poison import PoisonFindings, detect_poison
from mlsec.defenses.detection.neural_cleanse import (
    NeuralCleanse,
    ReversedTriggers,
    anomaly_index,
    flag_outliers,
    mask_iou,
)
from mlsec.defenses.detection.trigger import BADNETS_TRIGGER, PatchTrigger

__all__ = [
    "BADNETS_TRIGGER",
    "NeuralCleanse",
    "PatchTrigger",
    "PoisonFindings",
    "ReversedTriggers",
    "anomaly_index",
    "detect_poison",
    "flag_outliers",
    "mask_iou",
]
