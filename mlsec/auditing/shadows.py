"""LiRA's shadow models: trained by mlsec's own training loop, cached and resumable.

Each sample of the data the user provides (members and non-members together) is IN exactly half
of the ``count`` shadows (Carlini et al.'s balanced assignment); which half is drawn from the
seed and the sample's own fingerprint (a hash of its image and label), so it depends neither on
the batch layout nor on the order of the samples. Shadow ``k`` trains on its IN samples, sorted
by fingerprint, with :meth:`AdversarialTraining.fit` in its own subfolder of a cache folder keyed
by everything that decides the weights (data, architecture, method, recipe, count, seed): an
interrupted run resumes where it stopped, a finished one is reused without training, and other
data or settings land in another folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from safetensors import SafetensorError, safe_open
from safetensors.torch import save
from torch import nn

from mlsec.attacks.inference.scores import logit_scaled, logits_of
from mlsec.core.files import write_atomic
from mlsec.core.keyed import SampleKeys
from mlsec.core.validation import check_count, check_seed
from mlsec.defenses.checkpoints import CHECKPOINT
from mlsec.defenses.training import AdversarialTraining, StandardTraining, TrainConfig
from mlsec.errors import InputError

__all__ = [
    "ShadowSet",
    "Shadows",
    "assignment",
    "default_cache",
    "sample_hashes",
    "shadow_phi",
    "train_shadows",
]

# The cache folder's layout version: a change makes old folders unused, never misread.
_LAYOUT = 1


def sample_hashes(x: torch.Tensor, y: torch.Tensor) -> list[str]:
    """SHA-256 per sample over its input's dtype, shape and bytes and its label.

    Example:
        >>> h = sample_hashes(torch.zeros(3, 2), torch.tensor([0, 0, 1]))
        >>> h[0] == h[1], h[0] == h[2]
        (True, False)

    """
    rows = x.detach().cpu().contiguous()
    labels = y.detach().cpu().long().tolist()
    head = f"{rows.dtype}{tuple(rows.shape[1:])}".encode()
    flat = rows.reshape(rows.shape[0], -1)
    out = []
    for row, label in zip(flat, labels, strict=True):
        digest = hashlib.sha256(head)
        digest.update(row.numpy().tobytes())
        digest.update(str(label).encode())
        out.append(digest.hexdigest())
    return out


def _index(hashes: list[str]) -> torch.Tensor:
    """The fingerprints as int64 keys for :class:`SampleKeys` (62 bits: non-negative)."""
    return torch.tensor([int(h[:16], 16) >> 2 for h in hashes], dtype=torch.int64)


def assignment(hashes: list[str], count: int, seed: int) -> torch.Tensor:
    """``[count, N]`` bool: each sample IN exactly ``count // 2`` shadows, drawn per sample.

    Example:
        >>> inside = assignment(sample_hashes(torch.rand(5, 3), torch.arange(5)), 4, seed=0)
        >>> inside.sum(0).tolist()
        [2, 2, 2, 2, 2]

    """
    keys = SampleKeys.of(seed, _index(hashes))
    ranks = keys.uniform((count,), stream="shadows/assignment").argsort(1).argsort(1)
    return (ranks < count // 2).T.contiguous()


def default_cache() -> Path:
    """``$MLSEC_CACHE``, else ``$XDG_CACHE_HOME/mlsec``, else ``~/.cache/mlsec``."""
    if os.environ.get("MLSEC_CACHE"):
        return Path(os.environ["MLSEC_CACHE"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "mlsec"
    return Path.home() / ".cache" / "mlsec"


@dataclass(frozen=True, kw_only=True)
class Shadows:
    """How to train LiRA's shadow models.

    Args:
        build: returns the untrained architecture (e.g. :func:`mlsec.zoo.architectures.mnist_cnn`).
        arch: its ``module:factory`` name, for the report and the cache key.
        count: shadow models, even and at least 2 (each sample is IN half of them).
        method: the training method (default plain training).
        config: the recipe; default 10 epochs, Adam 1e-3, batch 64 (the bundled CNN's batch
            size), cosine schedule: a mnist_cnn shadow on 5,000 images takes about 14 s at 2
            threads.
        folder: the cache folder: the shadows go to its subfolder ``<key>``; ``None``:
            ``shadows/<key>`` under :func:`default_cache`.
        seed: seeds the assignment and each shadow's initial weights.

    """

    build: Callable[[], nn.Module]
    arch: str
    count: int = 8
    method: AdversarialTraining = field(default_factory=lambda: StandardTraining(eps=0.0))
    config: TrainConfig = field(default_factory=lambda: TrainConfig(batch_size=64))
    folder: Path | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        check_count("count", self.count, low=2)
        if self.count % 2:
            raise InputError(
                f"count must be even, each sample IN half the shadows (got {self.count})"
            )
        check_seed(self.seed)
        if not callable(self.build):
            raise InputError("build must be a callable that returns the untrained model")

    def key(self, data_fingerprint: str) -> str:
        """The cache key: a short SHA-256 of everything that decides the shadows' weights."""
        parts = {
            "layout": _LAYOUT,
            "data": data_fingerprint,
            "arch": self.arch,
            "method": repr(self.method),
            "config": repr(self.config),
            "count": self.count,
            "seed": self.seed,
        }
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ShadowSet:
    """Trained shadow models and what they trained on.

    Attributes:
        models: the ``count`` shadows, in eval mode.
        hashes: the fingerprints of the samples the shadows were trained on (see
            :func:`sample_hashes`), in the order given.
        shadow_in: ``[count, N]`` bool, shadow ``k`` trained on sample ``n``.
        seed: the assignment's seed.
        info: for the report: count, arch, method, config, folder, seconds, trained, reused.

    """

    models: list[nn.Module]
    hashes: list[str]
    shadow_in: torch.Tensor
    seed: int
    info: dict[str, Any]
    _phi: dict[str, torch.Tensor] = field(default_factory=dict, repr=False, compare=False)

    def membership(self, hashes: list[str]) -> torch.Tensor:
        """``[count, N]`` IN flags of the samples ``hashes``, each of which the shadows saw."""
        known = set(self.hashes)
        missing = [i for i, h in enumerate(hashes) if h not in known]
        if missing:
            raise InputError(
                f"{len(missing)} samples (the first at position {missing[0]}) were not in the data "
                "the shadow models were trained on; train the shadows on the members and "
                "non-members being audited"
            )
        return assignment(hashes, len(self.models), self.seed)


def _fingerprint(hashes: list[str]) -> str:
    return hashlib.sha256("".join(sorted(hashes)).encode()).hexdigest()


def _train_one(
    shadows: Shadows, k: int, x: torch.Tensor, y: torch.Tensor, folder: Path, **kw: Any
) -> tuple[nn.Module, bool]:
    """Shadow ``k`` trained (or resumed, or reused) in ``folder``; whether any epoch ran now."""
    device = kw.pop("device")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(shadows.seed * 1_000_003 + k)
        model = shadows.build().to(device)
    config = dataclasses.replace(shadows.config, seed=shadows.config.seed + k)
    epochs: list[int] = []
    resume = (folder / CHECKPOINT).is_file()
    shadows.method.fit(
        (x, y),
        model=model,
        config=config,
        folder=folder,
        resume=resume,
        on_epoch=lambda record: epochs.append(record["epoch"]),
        **kw,
    )
    return model.eval(), bool(epochs)


def train_shadows(
    shadows: Shadows,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    device: torch.device | str | None = None,
    progress: bool = False,
    console: Console | None = None,
) -> ShadowSet:
    """Train (or resume, or reuse from the cache) the shadow models on ``(x, y)``.

    Args:
        shadows: how many, which architecture and recipe, where to cache.
        x: all the data the audit scores (members and non-members together).
        y: its labels.
        device: where the shadows train (default: the CPU).
        progress: show each shadow's training progress on ``console``.
        console: where progress goes (stderr by default).

    Returns:
        A :class:`ShadowSet`; its ``info["trained"]`` counts the shadows that trained at least
        one epoch now, ``info["reused"]`` those the cache already held finished.

    """
    start = time.perf_counter()
    device = torch.device(device) if device is not None else torch.device("cpu")
    hashes = sample_hashes(x, y)
    inside = assignment(hashes, shadows.count, shadows.seed)
    # Training order by fingerprint: the same shadows whatever order the samples come in.
    order = torch.tensor(sorted(range(len(hashes)), key=hashes.__getitem__), dtype=torch.long)
    key = shadows.key(_fingerprint(hashes))
    folder = (shadows.folder or default_cache() / "shadows") / key
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / "shadows.json", json.dumps(_describe(shadows, key), indent=2))
    models, trained = [], 0
    for k in range(shadows.count):
        rows = order[inside[k][order]]
        model, ran = _train_one(
            shadows,
            k,
            x[rows],
            y[rows],
            folder / f"shadow-{k}",
            device=device,
            progress=progress,
            console=console,
        )
        models.append(model)
        trained += ran
    info = {
        **_describe(shadows, key),
        "folder": str(folder),
        "seconds": time.perf_counter() - start,
        "trained": trained,
        "reused": shadows.count - trained,
    }
    return ShadowSet(models, hashes, inside, shadows.seed, info)


def _describe(shadows: Shadows, key: str) -> dict[str, Any]:
    return {
        "count": shadows.count,
        "arch": shadows.arch,
        "method": repr(shadows.method),
        "config": repr(shadows.config),
        "seed": shadows.seed,
        "key": key,
    }


def shadow_phi(
    shadow_set: ShadowSet,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int = 500,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Each shadow's logit-scaled confidence on ``(x, y)``: float64 ``[count, N]``.

    Computed once per data set and kept in the shadow set, so auditing a second model with the
    same shadows costs no shadow forward passes.
    """
    fingerprint = hashlib.sha256("".join(sample_hashes(x, y)).encode()).hexdigest()
    cached = shadow_set._phi.get(fingerprint)
    if cached is not None:
        return cached
    folder = shadow_set.info.get("folder")
    path = None if folder is None else Path(folder) / f"phi-{fingerprint[:16]}.safetensors"
    phi = _read_phi(path, fingerprint, (len(shadow_set.models), x.shape[0]))
    if phi is None:
        phi = torch.stack(
            [
                logit_scaled(logits_of(m, x, batch_size, device, name="a shadow model"), y)
                for m in shadow_set.models
            ]
        )
        if path is not None:
            write_atomic(path, save(_phi_entry(phi), metadata={"data": fingerprint}))
    shadow_set._phi[fingerprint] = phi
    return phi


def _phi_entry(phi: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"phi": phi.contiguous()}


def _read_phi(path: Path | None, fingerprint: str, shape: tuple[int, int]) -> torch.Tensor | None:
    """The cached scores at ``path`` if they are of this data and shape; else ``None``."""
    if path is None or not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            if (handle.metadata() or {}).get("data") != fingerprint:
                return None
            phi = handle.get_tensor("phi")
    except (OSError, ValueError, RuntimeError, KeyError, SafetensorError):  # damaged: recompute
        return None
    ok = phi.dtype == torch.float64 and tuple(phi.shape) == shape and bool(phi.isfinite().all())
    return phi if ok else None
