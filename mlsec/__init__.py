"""mlsec: adversarial-robustness auditing, fast batched attacks and GAN-based defenses for PyTorch.

Example:
    >>> import mlsec
    >>> x, y = mlsec.datasets.mnist_sample()
    >>> model = mlsec.zoo.load("mnist-cnn")
    >>> x_adv = mlsec.attacks.PGD(eps=0.3, steps=10)(model, x[:16], y[:16])

"""

from mlsec import attacks, datasets, defenses, testing, zoo
from mlsec.attacks import Attack, AttackResult
from mlsec.audit import audit
from mlsec.errors import InputError
from mlsec.normalize import Normalized
from mlsec.report import AuditReport
from mlsec.threat import ThreatModel

__version__ = "0.1.0"

__all__ = [
    "Attack",
    "AttackResult",
    "AuditReport",
    "InputError",
    "Normalized",
    "ThreatModel",
    "attacks",
    "audit",
    "datasets",
    "defenses",
    "testing",
    "zoo",
]
