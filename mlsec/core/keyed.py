"""Sample-keyed randomness: every draw for a sample comes from a stream keyed by who it is.

An attack's random start, its restarts, Square's proposals and a randomised defense's draws must
not depend on which other samples share the batch, on the survivors-only schedule, on where a run
resumed or on how many processes split the data. So a draw is not taken from a generator that
advances as batches go by; it is a pure function of

    (seed, the sample's index in the data set, the restart, the stream's name and step, the element)

computed on the device by a counter-based hash (Salmon et al. 2011 made the idea standard for
parallel generators; the mixing function here is Wellons' ``lowbias32``). The arithmetic is
64-bit integer arithmetic that never overflows, so CPUs and GPUs draw the same numbers.

Example:
    >>> keys = SampleKeys.of(seed=0, index=torch.tensor([5, 9]))
    >>> a = keys.uniform((3,), stream="start")
    >>> b = SampleKeys.of(seed=0, index=torch.tensor([9])).uniform((3,), stream="start")
    >>> torch.equal(a[1], b[0])  # sample 9 draws the same, whoever shares its batch
    True

"""

from __future__ import annotations

import contextlib
import contextvars
import math
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TypeVar

import torch

__all__ = ["ModelDraw", "SampleKeys", "current_draw", "drawing_for"]

_MASK32 = 0xFFFFFFFF
_MASK16 = 0xFFFF

# The hash runs on tensors (the draws) and on Python ints (seeds and stream names, on the host).
_Word = TypeVar("_Word", torch.Tensor, int)


def _mul32(x: _Word, constant: int) -> _Word:
    """``x * constant mod 2**32`` for ``0 <= x < 2**32``, with no intermediate above 2**49."""
    low = x * (constant & _MASK16)
    high = ((x * (constant >> 16)) & _MASK16) << 16
    return (low + high) & _MASK32


def _mix(x: _Word) -> _Word:
    """Wellons' ``lowbias32`` on int64 tensors holding unsigned 32-bit values."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _word(value: int) -> int:
    """An int as one mixed 32-bit word (its two halves folded), for seeds and stream steps."""
    low = _mix(value & _MASK32)
    high = _mix(((value >> 32) & _MASK32) ^ 0x5BD1E995)
    return _mix(low ^ high)


def _stream(name: str, step: int) -> int:
    return _word((zlib.crc32(name.encode()) << 32) ^ (step & ((1 << 32) - 1)))


@dataclass(frozen=True)
class SampleKeys:
    """Per-row keys of independent random streams: one int64 ``[B]`` tensor of 32-bit words.

    Build with :meth:`of`; a row's key depends on the seed, the sample's index in the data set
    and the restart only. :meth:`fold` keys restarts folded into the batch, :meth:`select` follows
    rows that leave it; :meth:`uniform`, :meth:`normal` and :meth:`integers` draw per row, each
    named stream and step giving its own independent numbers.
    """

    keys: torch.Tensor

    @classmethod
    def of(cls, seed: int, index: torch.Tensor, restart: int | torch.Tensor = 0) -> SampleKeys:
        """Keys of the samples ``index`` (their positions in the data set) under ``seed``.

        ``restart`` (per row, or one for all) gives the keys of :meth:`restart` of the sample's.
        """
        index = index.to(torch.int64)
        seeded = torch.full_like(index, _word(seed))
        low = _mix(seeded ^ (index & _MASK32))
        key = _mix(low ^ ((index >> 32) & _MASK32))
        if isinstance(restart, int):
            return cls(key).restart(restart)
        # The same keys as ``restart`` and ``fold`` give: one notion of a restart's keys.
        restart = restart.to(index.device, torch.int64) & _MASK32
        return cls(torch.where(restart == 0, key, _mix(key ^ _mix(restart))))

    @property
    def device(self) -> torch.device:
        """Where the keys (and so the draws) live."""
        return self.keys.device

    def __len__(self) -> int:
        return int(self.keys.shape[0])

    def to(self, device: torch.device | str) -> SampleKeys:
        """The same keys on ``device`` (the draws do not depend on it)."""
        return SampleKeys(self.keys.to(device))

    def fold(self, folds: int) -> SampleKeys:
        """Keys of ``folds`` restarts folded into the batch: row ``f * B + i`` is restart ``f``.

        Fold 0 keeps each row's own key, so a one-restart attack draws what its first restart
        draws with more.
        """
        if folds == 1:
            return self
        restart = torch.arange(folds, device=self.device).repeat_interleave(len(self))
        rows = self.keys.repeat(folds)
        return SampleKeys(torch.where(restart == 0, rows, _mix(rows ^ _mix(restart))))

    def restart(self, number: int) -> SampleKeys:
        """The keys of restart ``number`` of each row: row ``r`` of ``fold(F)[number * B:]``."""
        if number == 0:
            return self
        return SampleKeys(_mix(self.keys ^ _mix(torch.full_like(self.keys, number))))

    def select(self, rows: torch.Tensor) -> SampleKeys:
        """The keys of ``rows`` (indices or a bool mask)."""
        return SampleKeys(self.keys[rows])

    def words(self, shape: tuple[int, ...], *, stream: str, step: int = 0) -> torch.Tensor:
        """Uniform 32-bit words (int64) ``[B, *shape]`` of the named stream at ``step``."""
        count = math.prod(shape)
        element = torch.arange(count, device=self.device, dtype=torch.int64)
        row = _mix(self.keys ^ _stream(name=stream, step=step)).unsqueeze(1)
        out = _mix(_mix(row ^ element) ^ 0x27D4EB2F)
        return out.view(len(self), *shape)

    def uniform(
        self,
        shape: tuple[int, ...],
        *,
        stream: str,
        step: int = 0,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """Uniform numbers in the open interval (0, 1), ``[B, *shape]``, 24 bits each."""
        words = self.words(shape, stream=stream, step=step)
        return ((words >> 8).to(torch.float64) + 0.5).mul_(2.0**-24).to(dtype)

    def normal(
        self,
        shape: tuple[int, ...],
        *,
        stream: str,
        step: int = 0,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """Standard normal numbers ``[B, *shape]`` (Box-Muller on two uniform streams)."""
        u1 = self.uniform(shape, stream=stream, step=step, dtype=torch.float64)
        u2 = self.uniform(shape, stream=stream + "/angle", step=step, dtype=torch.float64)
        return ((-2.0 * u1.log()).sqrt() * torch.cos(2.0 * math.pi * u2)).to(dtype)

    def integers(
        self, high: int | torch.Tensor, shape: tuple[int, ...], *, stream: str, step: int = 0
    ) -> torch.Tensor:
        """Integers in ``[0, high)`` ``[B, *shape]``; ``high`` may differ per row (``[B]``)."""
        u = self.uniform(shape, stream=stream, step=step, dtype=torch.float64)
        if isinstance(high, torch.Tensor):
            high = high.to(self.device, torch.float64).view(-1, *([1] * len(shape)))
        value = (u * high).floor().to(torch.int64)
        # u < 1 always, but guard the float product's rounding at the top.
        return torch.minimum(value, torch.as_tensor(high, device=self.device).long() - 1)


@dataclass
class ModelDraw:
    """The keys of the rows a model is about to see, and which of its calls this is.

    A randomised model (a purifier with random restarts) reads :func:`current_draw` and draws
    for row ``r`` from ``keys`` at step ``call``: the same sample gets the same randomness at the
    same point of an attack, whatever batch it is in. ``call`` counts the model's forward passes
    within one attack (or one pass of the clean data).
    """

    keys: SampleKeys
    call: int = 0


_CURRENT: contextvars.ContextVar[ModelDraw | None] = contextvars.ContextVar(
    "mlsec_model_draw", default=None
)


def current_draw() -> ModelDraw | None:
    """The keys of the batch being passed to the model now, or ``None`` outside any attack."""
    return _CURRENT.get()


@contextlib.contextmanager
def drawing_for(keys: SampleKeys, call: int) -> Iterator[ModelDraw]:
    """Within the block, :func:`current_draw` is ``ModelDraw(keys, call)``."""
    draw = ModelDraw(keys, call)
    token = _CURRENT.set(draw)
    try:
        yield draw
    finally:
        _CURRENT.reset(token)
