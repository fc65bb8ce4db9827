"""The backdoor scan: Neural Cleanse on clean data, ART's poison detectors on training data.

:func:`scan` reverse-engineers a trigger for every class of a model
(:class:`~mlsec.defenses.detection.NeuralCleanse`), flags the classes whose trigger is anomalously
small and, given the model's training data, runs ART's poison detectors on it. The result is a
:class:`ScanReport`; its JSON form is versioned (``schema_version``) and documented in
``docs/backdoors.md``. Its Markdown, HTML and JUnit renderers live in :mod:`mlsec.reports.scan`
and register themselves in :data:`SCAN_FORMATS`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn

from mlsec.auditing import checks
from mlsec.auditing.run import environment
from mlsec.core import model as _model
from mlsec.core.data import as_tensors
from mlsec.core.progress import progress as progress_bars
from mlsec.core.registry import Registry
from mlsec.core.validation import check_labels
from mlsec.defenses.detection.art_poison import detect_poison
from mlsec.defenses.detection.neural_cleanse import NeuralCleanse, ReversedTriggers, mask_iou
from mlsec.defenses.detection.trigger import PatchTrigger
from mlsec.errors import InputError

__all__ = ["SCAN_FORMATS", "SCAN_SCHEMA_VERSION", "ClassScan", "ScanReport", "scan"]

SCAN_SCHEMA_VERSION = 1


@dataclass(frozen=True, kw_only=True)
class ClassScan:
    """Neural Cleanse's finding for one class.

    Attributes:
        label: the class.
        l1: L1 norm of its reversed mask (pixels).
        anomaly_index: distance of ``l1`` from the median in median absolute deviations.
        flagged: whether the class is flagged as a backdoor target.
        attack_success: fraction of clean samples of other classes its reversed trigger sends to it.
        iou: intersection over union of its mask with the true trigger's patch, when known.

    """

    label: int
    l1: float
    anomaly_index: float
    flagged: bool
    attack_success: float
    iou: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types; the class under the key ``"class"``."""
        return {
            "class": self.label,
            "l1": self.l1,
            "anomaly_index": self.anomaly_index,
            "flagged": self.flagged,
            "attack_success": self.attack_success,
            "iou": self.iou,
        }


@dataclass(frozen=True, kw_only=True)
class ScanReport:
    """The result of a backdoor scan.

    Attributes:
        model: the model's name.
        data: the clean data's name.
        n: clean samples used.
        classes: one :class:`ClassScan` per class.
        flagged_classes: the flagged classes, ascending.
        detectors: ART's poison detectors' findings (plain dicts; empty without training data).
        seconds: wall time of the scan.
        config: the Neural Cleanse settings.
        environment: versions, platform and device.
        trigger: the true trigger (target, top, left, height, width), when known.
        masks: ``[K, H, W]`` reversed masks (not in the JSON).
        patterns: ``[K, C, H, W]`` reversed patterns (not in the JSON).
        train_data: the training data's name, when the detectors ran.

    """

    model: str
    data: str
    n: int
    classes: list[ClassScan]
    flagged_classes: list[int]
    detectors: list[dict[str, Any]]
    seconds: float
    config: dict[str, Any]
    environment: dict[str, str]
    trigger: dict[str, int] | None = None
    masks: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 0, 0), repr=False)
    patterns: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 0, 0, 0), repr=False)
    train_data: str | None = None

    @property
    def passed(self) -> bool:
        """True when no class is flagged."""
        return not self.flagged_classes

    def to_dict(self) -> dict[str, Any]:
        """Everything but the masks and patterns, as plain JSON types."""
        return {
            "schema_version": SCAN_SCHEMA_VERSION,
            "kind": "backdoor-scan",
            "model": self.model,
            "data": self.data,
            "n": self.n,
            "method": "neural-cleanse",
            "classes": [result.to_dict() for result in self.classes],
            "flagged_classes": list(self.flagged_classes),
            "passed": self.passed,
            "trigger": None if self.trigger is None else dict(self.trigger),
            "train_data": self.train_data,
            "detectors": [dict(found) for found in self.detectors],
            "seconds": self.seconds,
            "config": dict(self.config),
            "environment": dict(self.environment),
        }

    def to_json(self) -> str:
        """The report as JSON text (see :meth:`to_dict`)."""
        return json.dumps(self.to_dict(), indent=2)

    def to_markdown(self) -> str:
        """A Markdown summary: the per-class table, the verdict, the detectors."""
        return str(SCAN_FORMATS.get("markdown")(self))

    def to_html(self, path: str | Path | None = None) -> str:
        """A self-contained HTML report with the reversed triggers; written to ``path`` if given."""
        html = str(SCAN_FORMATS.get("html")(self))
        if path is not None:
            Path(path).write_text(html, encoding="utf-8")
        return html

    def to_junit(self) -> str:
        """JUnit XML: one test case per class, failing when the class is flagged."""
        return str(SCAN_FORMATS.get("junit")(self))


# Renderers by name; mlsec.reports.scan registers them (imported by ``import mlsec``).
SCAN_FORMATS: Registry[Callable[[ScanReport], str]] = Registry("scan report format")


def scan(
    model: nn.Module,
    data: Any,
    *,
    method: NeuralCleanse | None = None,
    train_data: Any = None,
    trigger: PatchTrigger | None = None,
    device: str | torch.device | None = None,
    progress: bool = False,
    console: Console | None = None,
    model_name: str = "model",
    data_name: str = "data",
    train_data_name: str = "train-data",
) -> ScanReport:
    """Scan ``model`` for a backdoor: Neural Cleanse on ``data``, ART's detectors on training data.

    Args:
        model: a classifier returning logits ``[B, K]`` for images ``[B, C, H, W]`` in [0, 1].
        data: clean samples (an ``(x, y)`` pair, a Dataset or a DataLoader), of at least 2 classes.
        method: the Neural Cleanse settings (default :class:`NeuralCleanse` ``()``).
        train_data: the model's training data; when given, ART's poison detectors run on it.
        trigger: the planted trigger, when known: each class's mask is compared with its patch.
        device: where to run; the model is moved there (in place, as ``nn.Module.to`` does).
        progress: draw a progress bar (or log a line per stage).
        console: where progress goes (default: standard error).
        model_name: the model's name in the report.
        data_name: the data's name in the report.
        train_data_name: the training data's name in the report.

    Returns:
        A :class:`ScanReport`.

    """
    method = NeuralCleanse() if method is None else method
    if not isinstance(method, NeuralCleanse):
        raise InputError(f"method must be a NeuralCleanse (got {type(method).__name__})")
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a torch.nn.Module (got {type(model).__name__})")
    if device is not None:
        model.to(torch.device(device))
    start = time.perf_counter()
    x, y = _clean_data(model, data)
    classes = _check_outputs(model, x, y)
    train = None if train_data is None else _training_data(train_data, x)
    with progress_bars(enabled=progress, console=console, unit="steps") as tracker:
        stage = tracker.stage("neural cleanse", method.steps)
        found = method.reverse(model, x, y, stage=stage)
        stage.finish()
    detectors = []
    if train is not None:
        findings = detect_poison(model, *train, classes=classes, seed=method.seed)
        detectors = [finding.to_dict() for finding in findings]
    return ScanReport(
        model=model_name,
        data=data_name,
        n=int(x.shape[0]),
        classes=_per_class(found, trigger),
        flagged_classes=found.flagged_classes,
        detectors=detectors,
        seconds=time.perf_counter() - start,
        config=method.config(),
        environment=environment(_model.device_of(model)),
        trigger=_trigger_dict(trigger),
        masks=found.masks,
        patterns=found.patterns,
        train_data=train_data_name if train_data is not None else None,
    )


def _clean_data(model: nn.Module, data: Any) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = as_tensors(data, "data")
    if x.dim() != 4:
        raise InputError(
            f"the data must be images [N, C, H, W] (got shape {tuple(x.shape)})", subject="data"
        )
    if int(torch.unique(y).numel()) < 2:
        raise InputError("the data must hold samples of at least 2 classes", subject="data")
    if float(x.min()) < 0 or float(x.max()) > 1:
        raise InputError("the images must lie in [0, 1]; scale them first", subject="data")
    device = _model.device_of(model)
    return x.to(device), y.to(device)


def _training_data(data: Any, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x_train, y_train = as_tensors(data, "train_data")
    if x_train.shape[1:] != x.shape[1:]:
        raise InputError(
            f"the training inputs have shape {tuple(x_train.shape[1:])} per sample but the "
            f"data has {tuple(x.shape[1:])}; pass the model's training data",
            subject="train_data",
        )
    return x_train, y_train


def _check_outputs(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """The model's number of classes; logits required (not probabilities), labels in range."""
    _model.check_device(model, x)
    with _model.frozen(model), torch.no_grad():
        check_labels(model, x, y, None)
        logits = model(x[:16])
    if logits.shape[1] < 2:
        raise InputError(f"the model must output one score per class (got {logits.shape[1]})")
    if checks.probability_outputs(logits):
        raise InputError(
            "the model's outputs look like probabilities (rows sum to 1); Neural Cleanse needs "
            "logits: remove the final softmax"
        )
    return int(logits.shape[1])


def _per_class(found: ReversedTriggers, trigger: PatchTrigger | None) -> list[ClassScan]:
    height, width = found.masks.shape[-2:]
    truth = None if trigger is None else trigger.mask(height, width)
    return [
        ClassScan(
            label=k,
            l1=float(found.l1[k]),
            anomaly_index=float(found.anomaly[k]),
            flagged=bool(found.flagged[k]),
            attack_success=float(found.success[k]),
            iou=None if truth is None else mask_iou(found.masks[k], truth),
        )
        for k in range(found.masks.shape[0])
    ]


def _trigger_dict(trigger: PatchTrigger | None) -> dict[str, int] | None:
    if trigger is None:
        return None
    return {
        "target": trigger.target,
        "top": trigger.top,
        "left": trigger.left,
        "height": trigger.height,
        "width": trigger.width,
    }
