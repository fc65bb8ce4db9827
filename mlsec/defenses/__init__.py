"""Defenses behind the Defense interface: adversarial training (PGD-AT, Fast-AT, TRADES)."""

from mlsec.defenses.base import Defense
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
    "TRADES",
    "AdversarialTraining",
    "CatastrophicOverfittingWarning",
    "Defense",
    "FastAdversarialTraining",
    "PGDAdversarialTraining",
    "StandardTraining",
    "TrainConfig",
    "TrainingResult",
    "detect_collapse",
    "parse_schedule",
]
