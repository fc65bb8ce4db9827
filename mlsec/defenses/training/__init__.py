"""Adversarial training: PGD-AT (Madry et al.), Fast-AT (Wong et al.) and TRADES (Zhang et al.).

Every method is a frozen dataclass of its hyperparameters behind the :class:`Defense` interface
(:mod:`~mlsec.defenses.training.methods`, registered in :data:`METHODS`); :class:`TrainConfig`
holds what all of them share (epochs, optimiser, schedule, seed;
:mod:`~mlsec.defenses.training.config`). One loop (:mod:`~mlsec.defenses.training.loop`),
:meth:`AdversarialTraining.fit`, trains any of them: the inner maximisation is an
:class:`mlsec.attacks.PGD` (there is no second PGD), each epoch ends with clean and PGD accuracy on
held-out data, and with a folder it appends one JSON line per epoch to ``log.jsonl`` and writes a
checkpoint (weights, optimiser and RNG state, all safetensors, through a temporary file and a
rename; :mod:`~mlsec.defenses.training.state`) from which ``resume=True`` continues exactly. A
checkpoint records the settings and a SHA-256 of the data it was made with; resuming with anything
else, or from a damaged file, is an :class:`InputError` that says which.

References:
    A. Madry, A. Makelov, L. Schmidt, D. Tsipras, A. Vladu. Towards Deep Learning Models Resistant
    to Adversarial Attacks. ICLR 2018. arXiv:1706.06083.

    E. Wong, L. Rice, J. Z. Kolter. Fast is better than free: Revisiting adversarial training.
    ICLR 2020. arXiv:2001.03994.

    H. Zhang, Y. Yu, J. Jiao, E. P. Xing, L. El Ghaoui, M. I. Jordan. Theoretically Principled
    Trade-off between Robustness and Accuracy. ICML 2019. arXiv:1901.08573.

"""

from mlsec.defenses.checkpoints import RUN_FILES, check_folder
from mlsec.defenses.training.config import (
    CatastrophicOverfittingWarning,
    TrainConfig,
    TrainingResult,
    detect_collapse,
    parse_schedule,
)
from mlsec.defenses.training.gaussian import GaussianTraining
from mlsec.defenses.training.ibp import IBPTraining
from mlsec.defenses.training.methods import (
    METHODS,
    TRADES,
    AdversarialTraining,
    FastAdversarialTraining,
    PGDAdversarialTraining,
    StandardTraining,
)
from mlsec.defenses.weights import save_weights

__all__ = [
    "METHODS",
    "RUN_FILES",
    "TRADES",
    "AdversarialTraining",
    "CatastrophicOverfittingWarning",
    "FastAdversarialTraining",
    "GaussianTraining",
    "IBPTraining",
    "PGDAdversarialTraining",
    "StandardTraining",
    "TrainConfig",
    "TrainingResult",
    "check_folder",
    "detect_collapse",
    "parse_schedule",
    "save_weights",
]
