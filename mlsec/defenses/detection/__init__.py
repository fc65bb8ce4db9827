"""Backdoor detection: Neural Cleanse trigger reverse-engineering and ART's poison detectors."""

from mlsec.defenses.detection.trigger import BADNETS_TRIGGER, PatchTrigger

__all__ = ["BADNETS_TRIGGER", "PatchTrigger"]
