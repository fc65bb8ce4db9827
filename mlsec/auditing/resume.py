"""Durable audit checkpoints: each finished batch's per-sample results, appended and fsynced.

A checkpoint folder holds ``meta.json`` (the fingerprint of the run: the model's weights and code,
the data, the resolved suite with its seeds, survivors mode, mlsec and torch versions) and one log
per process of the run that wrote it: ``batches.jsonl`` for rank 0, ``batches.R.jsonl`` for rank R.
A log line is one finished batch: its stage, its first sample, the sample indices attacked and
those broken, seconds, and a checksum. A run killed at any moment, SIGKILL included, leaves at
most a partial last line per log, which is discarded on resume.

Records are per sample: a resumed run reads every log in the folder, takes each recorded sample's
result as it stands, and attacks only the rest. Because every random draw is keyed by the sample
(:mod:`mlsec.core.keyed`), a sample's result does not depend on its batch, so the resumed run may
use another batch size or another number of processes and still ends with exactly the numbers
of an uninterrupted run.

Nothing stale is trusted: a folder whose fingerprint differs, whose ``meta.json`` is missing or
unreadable, or whose records fail their checksum (a SHA-256 over the record and the fingerprint,
so a line edited by hand or copied from another checkpoint fails too) or their checks (types,
sample indices in range, a sample recorded twice in one stage) is refused with a one-line
:class:`~mlsec.errors.InputError`; it is never re-initialised around old records.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mlsec.core.files import write_atomic
from mlsec.errors import InputError

__all__ = ["BatchRecord", "Checkpoint", "log_name"]

# 2: records carry a checksum; the fingerprint holds the model's code and the versions.
# 3: per-sample records in one log per process; randomness keyed by sample, not by call count.
FORMAT = 3

# The fingerprint's keys in plain words, for the message that refuses a folder.
_WHAT = {
    "model": "the model's weights",
    "code": "the model's code or layers",
    "data": "the data",
    "suite": "the attacks, their settings or seeds, or the eps grid",
    "survivors": "the survivors-only setting",
    "mlsec": "the mlsec version",
    "torch": "the torch version",
    "defense": "the defense or its settings",
    "settings": "the defended audit's attacks, eps grid, steps, EOT draws or seed",
}
_FIELDS = {"stage", "batch", "indices", "broken", "seconds", "checksum"}
# Written only by the defended audit: the samples further judges found broken.
_OPTIONAL = {"also_broken"}
_FRESH = "use a new folder or delete this one"


@dataclass(frozen=True, kw_only=True)
class BatchRecord:
    """One finished batch: which samples were attacked and which of them were broken.

    ``batch`` is the batch's first sample (unique within a stage, whoever attacked it).
    ``also_broken`` holds, for a batch judged by several models (the defended audit judges one
    example on the bare and on the defended model), the broken samples of each further judge;
    ``None`` in a plain audit and then not written.
    """

    stage: int
    batch: int
    indices: list[int]
    broken: list[int]
    seconds: float
    also_broken: list[list[int]] | None = None

    def fields(self) -> dict[str, Any]:
        """The record as JSON data, without the optional fields that are ``None``."""
        return {k: v for k, v in asdict(self).items() if k not in _OPTIONAL or v is not None}


def _canonical(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class Checkpoint:
    """A checkpoint folder for one audit configuration.

    Args:
        directory: the folder; created (with its parents) if missing.
        fingerprint: everything that decides the numbers, as JSON data; a folder made with
            another fingerprint is refused.
        samples: the number of samples in the data set, to check the recorded indices against.
        rank: this process's rank: it appends to its own log (``batches.jsonl`` for rank 0,
            ``batches.R.jsonl`` for rank R) and reads every log in the folder. In a job of several
            processes rank 0 must open the folder first (it writes ``meta.json``).

    Raises:
        InputError: the folder cannot be used: not a folder, not writable, made for a different
            audit or by an older mlsec, or holding records that fail their checks.

    """

    def __init__(
        self,
        directory: Path,
        fingerprint: dict[str, Any],
        *,
        samples: int | None = None,
        rank: int = 0,
    ) -> None:
        self.directory = directory
        self.samples = samples
        self._meta = directory / "meta.json"
        self._log = directory / log_name(rank)
        # Through JSON once, so tuples and lists compare as they will after a reload.
        self.fingerprint = json.loads(json.dumps({"format": FORMAT, **fingerprint}))
        self._key = hashlib.sha256(_canonical(self.fingerprint).encode()).hexdigest()
        self._prepare_folder()
        meta_exists = self._regular_or_absent(self._meta)
        log_exists = self._regular_or_absent(self._log)
        if meta_exists:
            self._check_meta()
        elif log_exists and self._log.stat().st_size > 0:
            raise InputError(
                f"{directory} holds {self._log.name} but no meta.json, so its records "
                f"cannot be matched to an audit; {_FRESH}",
                subject="checkpoint",
            )
        elif rank != 0:
            raise InputError(
                f"{directory} has no meta.json: rank 0 must open the folder first",
                subject="checkpoint",
            )
        else:
            self._write(
                self._meta,
                lambda: write_atomic(
                    self._meta, json.dumps(self.fingerprint, indent=2, sort_keys=True) + "\n"
                ),
            )
        self._write(self._log, lambda: self._log.open("ab").close())  # writable before any attack
        self.records: dict[tuple[int, int], BatchRecord] = {}
        self._seen: dict[int, set[int]] = {}
        for log in self._logs():
            self._read_log(log, own=log == self._log)

    def _logs(self) -> list[Path]:
        """Every process's log in the folder (this process's own included), by name."""
        logs = {self._log, *self.directory.glob("batches.*.jsonl")}
        main = self.directory / log_name(0)
        if self._regular_or_absent(main):
            logs.add(main)
        for log in logs:
            self._regular_or_absent(log)
        return sorted(logs, key=lambda path: path.name)

    def _prepare_folder(self) -> None:
        directory = self.directory
        try:
            if directory.exists() and not directory.is_dir():
                raise InputError(
                    f"{directory} exists and is not a folder; give a folder", subject="checkpoint"
                )
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise InputError(
                f"cannot create the folder {directory} "
                f"({error.strerror or error}); give a folder you can write to",
                subject="checkpoint",
            ) from None
        if not os.access(directory, os.W_OK | os.X_OK):
            raise InputError(
                f"cannot write to the folder {directory} (permission denied); "
                "give a folder you can write to",
                subject="checkpoint",
            )

    def _regular_or_absent(self, path: Path) -> bool:
        """Whether ``path`` exists; refuses it if it is anything but a regular file."""
        try:
            mode = path.lstat().st_mode
        except FileNotFoundError:
            return False
        except OSError as error:
            raise InputError(
                f"cannot read {path} ({error.strerror or error}); {_FRESH}", subject="checkpoint"
            ) from None
        if stat.S_ISREG(mode):
            return True
        if stat.S_ISDIR(mode):
            kind = "a folder"
        elif stat.S_ISLNK(mode):
            kind = "a symbolic link"
        else:
            kind = "a special file"
        raise InputError(f"{path} is {kind}, not a regular file; {_FRESH}", subject="checkpoint")

    @staticmethod
    def _write(path: Path, action: Callable[[], object]) -> None:
        try:
            action()
        except OSError as error:
            raise InputError(
                f"cannot write {path} ({error.strerror or error}); give a folder you can write to",
                subject="checkpoint",
            ) from None

    def _check_meta(self) -> None:
        try:
            text = self._meta.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise InputError(
                f"{self._meta} is unreadable ({error}); {_FRESH}", subject="checkpoint"
            ) from None
        try:
            saved = json.loads(text)
        except ValueError:
            raise InputError(
                f"{self._meta} is not valid JSON, so its audit is unknown; {_FRESH}",
                subject="checkpoint",
            ) from None
        if not isinstance(saved, dict):
            raise InputError(
                f"{self._meta} holds a JSON {_json_kind(saved)}, not the object "
                f"mlsec writes; {_FRESH}",
                subject="checkpoint",
            )
        made = saved.get("format")
        if made != FORMAT:
            formats = f"(checkpoint format {made}, this one reads {FORMAT})"
            if isinstance(made, int) and not isinstance(made, bool):
                reason = f"was made by {'an older' if made < FORMAT else 'a newer'} mlsec {formats}"
            else:
                reason = "has a meta.json without a checkpoint format"
            raise InputError(f"{self.directory} {reason}; {_FRESH}", subject="checkpoint")
        differing = sorted(
            key
            for key in set(saved) | set(self.fingerprint)
            if saved.get(key) != self.fingerprint.get(key)
        )
        if differing:
            changed = [_WHAT.get(key, repr(key)) for key in differing]
            said = " and ".join([", ".join(changed[:-1]), changed[-1]] if changed[:-1] else changed)
            raise InputError(
                f"{self.directory} belongs to a different audit: {said} changed; {_FRESH}",
                subject="checkpoint",
            )

    def _checksum(self, fields: dict[str, Any]) -> str:
        """SHA-256 over the record's fields and this checkpoint's fingerprint."""
        return hashlib.sha256(f"{self._key}\n{_canonical(fields)}".encode()).hexdigest()

    def _parse(self, line: bytes) -> BatchRecord:
        """The record on ``line``; raises ``ValueError`` saying what is wrong with it."""
        try:
            item = json.loads(line)
        except ValueError:
            raise ValueError("it is not valid JSON") from None
        if not isinstance(item, dict) or not _FIELDS <= set(item) <= _FIELDS | _OPTIONAL:
            raise ValueError(f"it needs exactly the fields {', '.join(sorted(_FIELDS))}")
        for key in ("stage", "batch"):
            if not _is_int(item[key]) or item[key] < 0:
                raise ValueError(f"{key} must be an integer >= 0 (got {item[key]!r})")
        indices, broken = item["indices"], item["broken"]
        for key, values in (("indices", indices), ("broken", broken)):
            if not isinstance(values, list) or not all(_is_int(v) for v in values):
                raise ValueError(f"{key} must be a list of integers")
            if len(set(values)) != len(values):
                raise ValueError(f"{key} repeats a sample")
        if not set(broken) <= set(indices):
            raise ValueError("broken lists samples that are not in indices")
        self._check_optional(item)
        limit = self.samples
        outside = [i for i in indices if i < 0 or (limit is not None and i >= limit)]
        if outside:
            raise ValueError(
                f"sample index {outside[0]} is out of range (the data has {limit} samples)"
                if limit is not None
                else f"sample index {outside[0]} is negative"
            )
        seconds = item["seconds"]
        if not isinstance(seconds, (int, float)) or isinstance(seconds, bool):
            raise ValueError(f"seconds must be a number (got {seconds!r})")
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"seconds must be a finite number >= 0 (got {seconds!r})")
        checksum = item.pop("checksum")
        if checksum != self._checksum(item):
            raise ValueError(
                "its checksum does not match (edited, damaged, or copied from another checkpoint)"
            )
        return BatchRecord(**item)

    @staticmethod
    def _check_optional(item: dict[str, Any]) -> None:
        """Raise ``ValueError`` unless the optional fields hold what the defended audit writes."""
        also = item.get("also_broken")
        if "also_broken" in item and not (
            isinstance(also, list)
            and all(
                isinstance(values, list)
                and all(_is_int(v) for v in values)
                and set(values) <= set(item["indices"])
                for values in also
            )
        ):
            raise ValueError("also_broken must be lists of attacked sample indices")

    def _read_log(self, log: Path, *, own: bool) -> None:
        """Add ``log``'s records; truncate a partial last line of this process's own log."""
        try:
            raw = log.read_bytes()
        except OSError as error:
            raise InputError(
                f"cannot read {log} ({error.strerror or error}); {_FRESH}",
                subject="checkpoint",
            ) from None
        good = 0
        for number, line in enumerate(raw.splitlines(keepends=True), start=1):
            if not line.endswith(b"\n"):
                break  # a partial last line: the run died while writing it
            try:
                record = self._parse(line)
                self._add(record)
            except ValueError as error:
                raise InputError(
                    f"{log} line {number} is not a valid record: {error}; {_FRESH}",
                    subject="checkpoint",
                ) from None
            good += len(line)
        if own and good != len(raw):
            with log.open("r+b") as fh:
                fh.truncate(good)
                fh.flush()
                os.fsync(fh.fileno())

    def _add(self, record: BatchRecord) -> None:
        """Index ``record``; ``ValueError`` if its batch or a sample is already recorded."""
        key = (record.stage, record.batch)
        if key in self.records:
            raise ValueError(
                f"it repeats stage {record.stage} batch {record.batch} "
                "(did two runs share this folder?)"
            )
        seen = self._seen.setdefault(record.stage, set())
        twice = seen.intersection(record.indices)
        if twice:
            raise ValueError(
                f"it records sample {min(twice)} of stage {record.stage} a second time "
                "(did two runs share this folder?)"
            )
        seen.update(record.indices)
        self.records[key] = record

    def stage_records(self, stage: int) -> list[BatchRecord]:
        """The recorded batches of ``stage``, in the order of their first sample."""
        return sorted(
            (record for (at, _), record in self.records.items() if at == stage),
            key=lambda record: record.batch,
        )

    def append(self, record: BatchRecord) -> None:
        """Append ``record`` with its checksum and force it to disk before returning."""
        fields = record.fields()
        line = _canonical({**fields, "checksum": self._checksum(fields)}) + "\n"
        try:
            self._add(record)
        except ValueError as error:
            raise InputError(f"{self.directory}: {error}; {_FRESH}", subject="checkpoint") from None
        with self._log.open("ab") as fh:
            fh.write(line.encode())
            fh.flush()
            os.fsync(fh.fileno())


def log_name(rank: int) -> str:
    """The name of rank ``rank``'s log in a checkpoint folder."""
    return "batches.jsonl" if rank == 0 else f"batches.{rank}.jsonl"


def _json_kind(value: object) -> str:
    kinds = {list: "list", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else kinds.get(type(value), type(value).__name__)
