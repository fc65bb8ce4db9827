"""Defenses behind the Defense interface: GAN purifiers and adversarial training.

Purifiers: Defense-GAN, APE-GAN. Adversarial training: PGD-AT, Fast-AT, TRADES.
"""

from mlsec.defenses.base import PURIFIERS, Defense, PurifiedModel, Purifier, load_defense
from mlsec.defenses.purifiers.ape_gan import APEGAN
from mlsec.defenses.purifiers.defense_gan import DefenseGAN
from mlsec.defenses.training import (
    TRADES,
    AdversarialTraining,
    CatastrophicOverfittingWarning,
    FastAdversarialTraining,
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
    "PGDAdversarialTraining",
    "PurifiedModel",
    "Purifier",
    "StandardTraining",
    "TrainConfig",
    "TrainingResult",
    "detect_collapse",
    "load_defense",
    "parse_schedule",
]
