"""Defenses behind the Defense interface: GAN purifiers and adversarial training.

Purifiers: Defense-GAN, APE-GAN. Adversarial training: PGD-AT, Fast-AT, TRADES; training for
certificates: Gaussian noise (randomized smoothing) and interval bound propagation. Certificates:
:mod:`mlsec.defenses.certified` (:class:`Smoothing`, :func:`~mlsec.defenses.certified.verified`).
Backdoor detection: :mod:`mlsec.defenses.detection` (:class:`NeuralCleanse`, ART's detectors).
"""

from mlsec.defenses import certified, detection
from mlsec.defenses.base import PURIFIERS, Defense, PurifiedModel, Purifier, load_defense
from mlsec.defenses.certified import Smoothing
from mlsec.defenses.detection import NeuralCleanse
from mlsec.defenses.purifiers.ape_gan import APEGAN
from mlsec.defenses.purifiers.defense_gan import DefenseGAN
from mlsec.defenses.training import (
    TRADES,
    AdversarialTraining,
    CatastrophicOverfittingWarning,
    FastAdversarialTraining,
    GaussianTraining,
    IBPTraining,
    PGDAdversarialTraining,
    StandardTraining,
    TrainConfig,
    TrainingResult,
    detect_collapse,
    parse_schedule,
)

__all__ = [
    "APEGAN",
    "PURIFIERS",
    "TRADES",
    "AdversarialTraining",
    "CatastrophicOverfittingWarning",
    "Defense",
    "DefenseGAN",
    "FastAdversarialTraining",
    "GaussianTraining",
    "IBPTraining",
    "NeuralCleanse",
    "PGDAdversarialTraining",
    "PurifiedModel",
    "Purifier",
    "Smoothing",
    "StandardTraining",
    "TrainConfig",
    "TrainingResult",
    "certified",
    "detect_collapse",
    "detection",
    "load_defense",
    "parse_schedule",
]
