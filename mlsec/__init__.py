"""mlsec: adversarial-robustness auditing, fast batched attacks and GAN-based defenses for PyTorch.

Example:
    >>> import mlsec
    >>> x, y = mlsec.datasets.mnist_sample()
    >>> model = mlsec.zoo.load("mnist-cnn")
    >>> x_adv = mlsec.attacks.PGD(eps=0.3, steps=10)(model, x[:16], y[:16])

"""

# reports: importing it registers the report formats that AuditReport.to_html() & co. use.
from mlsec import attacks, datasets, defenses, reports, testing, zoo
from mlsec.attacks import Attack, AttackResult
from mlsec.auditing.certified import Certification, certify
from mlsec.auditing.privacy import audit_privacy
from mlsec.auditing.privacy_report import PrivacyReport
from mlsec.auditing.report import AuditReport
from mlsec.auditing.run import audit
from mlsec.auditing.scan import ScanReport, scan
from mlsec.core.normalize import Normalized
from mlsec.core.threat import ThreatModel
from mlsec.core.version import VERSION
from mlsec.errors import InputError

__version__ = VERSION

__all__ = [
    "Attack",
    "AttackResult",
    "AuditReport",
    "Certification",
    "InputError",
    "Normalized",
    "PrivacyReport",
    "ScanReport",
    "ThreatModel",
    "attacks",
    "audit",
    "audit_privacy",
    "certify",
    "datasets",
    "defenses",
    "reports",
    "scan",
    "testing",
    "zoo",
]
