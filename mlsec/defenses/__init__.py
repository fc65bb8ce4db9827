"""Defenses behind the Defense interface: GAN purifiers and adversarial training.

Purifiers: Defense-GAN, APE-GAN. Adversarial training: PGD-AT, Fast-AT, TRADES.
"""

from mlsec.defenses.base import Defense, PurifiedModel, Purifier, load_defense
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

# The purifiers by name: ``mlsec defend train NAME`` and saved files' records.
PURIFIERS: dict[str, type[Purifier]] = {"defense-gan": DefenseGAN, "ape-gan": APEGAN}

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
