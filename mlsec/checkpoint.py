"""Durable audit checkpoints: each finished batch's per-sample results, appended and fsynced.

A checkpoint folder holds ``meta.json`` (the fingerprint of the run: model weights, data, resolved
suite, batch size) and ``batches.jsonl`` (one line per finished batch: stage, batch number, the
sample indices attacked and those broken, seconds). A run killed at any moment, SIGKILL included,
leaves at most a partial last line, which is discarded on resume. Because the runner splits the
survivors into the same batches in the same order, a resumed run replays the recorded batches and
attacks only the rest, ending with exactly the numbers of an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mlsec._files import write_atomic
from mlsec.errors import InputError

__all__ = ["BatchRecord", "Checkpoint", "fingerprint_model", "fingerprint_tensors"]

FORMAT = 1


def fingerprint_tensors(*tensors: torch.Tensor) -> str:
    """SHA-256 over the tensors' shapes, dtypes and bytes."""
    digest = hashlib.sha256()
    for tensor in tensors:
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{tuple(t.shape)}{t.dtype}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def fingerprint_model(model: nn.Module) -> str:
    """SHA-256 over the model's state dict (names, shapes, dtypes, values) and its class."""
    digest = hashlib.sha256(type(model).__qualname__.encode())
    for name, value in sorted(model.state_dict().items()):
        digest.update(name.encode())
        if isinstance(value, torch.Tensor):
            digest.update(fingerprint_tensors(value).encode())
    return digest.hexdigest()


@dataclass(frozen=True, kw_only=True)
class BatchRecord:
    """One finished batch: which samples were attacked and which of them were broken."""

    stage: int
    batch: int
    indices: list[int]
    broken: list[int]
    seconds: float


class Checkpoint:
    """A checkpoint folder for one audit configuration."""

    def __init__(self, directory: Path, fingerprint: dict[str, Any]) -> None:
        self.directory = directory
        self._meta = directory / "meta.json"
        self._log = directory / "batches.jsonl"
        # Through JSON once, so tuples and lists compare as they will after a reload.
        self.fingerprint = json.loads(json.dumps({"format": FORMAT, **fingerprint}))
        if directory.exists() and not directory.is_dir():
            raise InputError(f"--checkpoint: {directory} exists and is not a folder")
        directory.mkdir(parents=True, exist_ok=True)
        if self._meta.exists():
            self._check_meta()
        else:
            write_atomic(self._meta, json.dumps(self.fingerprint, indent=2, sort_keys=True) + "\n")
        self.records: dict[tuple[int, int], BatchRecord] = self._read_log()

    def _check_meta(self) -> None:
        try:
            saved = json.loads(self._meta.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise InputError(
                f"--checkpoint: {self._meta} is unreadable ({error}); use a new folder"
            ) from None
        differing = sorted(
            key
            for key in set(saved) | set(self.fingerprint)
            if saved.get(key) != self.fingerprint.get(key)
        )
        if differing:
            raise InputError(
                f"--checkpoint: {self.directory} belongs to a different audit "
                f"({', '.join(differing)} differ); use a new folder or delete this one"
            )

    def _read_log(self) -> dict[tuple[int, int], BatchRecord]:
        records: dict[tuple[int, int], BatchRecord] = {}
        if not self._log.exists():
            return records
        raw = self._log.read_bytes()
        good = 0
        for line in raw.splitlines(keepends=True):
            if not line.endswith(b"\n"):
                break  # a partial last line: the run died while writing it
            try:
                item = json.loads(line)
                record = BatchRecord(**item)
            except (ValueError, TypeError):
                break
            records[(record.stage, record.batch)] = record
            good += len(line)
        if good != len(raw):
            with self._log.open("r+b") as fh:
                fh.truncate(good)
                fh.flush()
                os.fsync(fh.fileno())
        return records

    def get(self, stage: int, batch: int, indices: list[int]) -> BatchRecord | None:
        """The recorded result of this batch, if any; it must cover exactly ``indices``."""
        record = self.records.get((stage, batch))
        if record is not None and record.indices != indices:
            raise InputError(
                f"--checkpoint: {self.directory} does not match this run (stage {stage}, batch "
                f"{batch} covered other samples); use a new folder"
            )
        return record

    def append(self, record: BatchRecord) -> None:
        """Append ``record`` and force it to disk before returning."""
        line = json.dumps(record.__dict__, separators=(",", ":")) + "\n"
        with self._log.open("ab") as fh:
            fh.write(line.encode())
            fh.flush()
            os.fsync(fh.fileno())
        self.records[(record.stage, record.batch)] = record
