"""Data read by index, batch by batch: a Dataset, a DataLoader or an ``(x, y)`` pair, checked.

A :class:`Samples` is a data set that is never required to be whole in memory: the audit reads it
through :func:`batches`, a torch ``DataLoader`` over chunks of sample indices, and checks each
batch as it arrives. Training, which keeps its data in memory, calls :meth:`Samples.tensors`.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from mlsec.core.text import raised_by
from mlsec.errors import InputError

__all__ = [
    "Batch",
    "DatasetSamples",
    "Samples",
    "TensorSamples",
    "as_samples",
    "as_tensors",
    "batches",
    "check_pair",
]

_CHUNK = 256  # samples read at once when a whole data set is materialised


class Samples(abc.ABC):
    """A data set read by index, batch by batch; never required to be whole in memory.

    ``subject`` names the data in the caller's terms; every error raised while reading it is an
    :class:`InputError` with that subject.
    """

    subject: str = "data"

    @abc.abstractmethod
    def __len__(self) -> int:
        """The number of samples."""

    @abc.abstractmethod
    def get(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs ``[k, ...]`` and int64 labels ``[k]`` on the CPU, in the order of ``indices``.

        Inputs read from files are float32. Raises :class:`InputError` naming the sample or file
        when one cannot be read.
        """

    def subset(self, indices: Sequence[int] | range) -> Samples:
        """The samples at ``indices`` (e.g. the first N), read lazily from this one."""
        return SubsetSamples(self, indices)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every sample in memory, as checked ``(x, y)`` tensors (for training)."""
        n = len(self)
        if n == 0:
            raise InputError("the data set is empty", subject=self.subject)
        parts = [self.get(range(i, min(i + _CHUNK, n))) for i in range(0, n, _CHUNK)]
        x, y = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        return check_pair(x, y, self.subject)


class TensorSamples(Samples):
    """``(x, y)`` tensors already in memory, checked once when wrapped.

    Rows are returned where the tensors live (a device copy is not made twice) and in their own
    floating-point type.

    Example:
        >>> samples = TensorSamples(torch.rand(5, 1, 2, 2), torch.arange(5))
        >>> len(samples), samples.get([4, 1])[1].tolist()
        (5, [4, 1])

    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, subject: str = "data") -> None:
        self.subject = subject
        self.x, self.y = check_pair(x, y, subject)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def get(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The rows at ``indices``."""
        if isinstance(indices, range) and indices.step == 1:
            return self.x[indices.start : indices.stop], self.y[indices.start : indices.stop]
        index = torch.as_tensor(list(indices), dtype=torch.long, device=self.x.device)
        return self.x[index], self.y[index]

    def subset(self, indices: Sequence[int] | range) -> Samples:
        """The rows at ``indices``, as tensors (views for a range)."""
        x, y = self.get(indices)
        return TensorSamples(x, y, self.subject)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The tensors themselves."""
        return self.x, self.y


class SubsetSamples(Samples):
    """The samples of ``base`` at ``indices``, read from ``base`` on demand."""

    def __init__(self, base: Samples, indices: Sequence[int] | range) -> None:
        self.base, self.indices, self.subject = base, indices, base.subject

    def __len__(self) -> int:
        return len(self.indices)

    def get(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The base's samples at our ``indices``."""
        return self.base.get([self.indices[i] for i in indices])


class DatasetSamples(Samples):
    """A map-style ``Dataset`` of ``(input, label)`` items, each read when asked for."""

    def __init__(self, dataset: Any, subject: str = "data") -> None:
        self.dataset, self.subject = dataset, subject

    def __len__(self) -> int:
        return len(self.dataset)

    def get(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Items at ``indices``, their inputs and labels stacked."""
        xs, ys = [], []
        for i in indices:
            try:
                item = self.dataset[i]
            except (Exception, SystemExit) as error:  # the Dataset's own code may fail anyhow
                raise InputError(
                    f"reading the data raised {raised_by(error)} at sample {i}",
                    subject=self.subject,
                ) from None
            x, y = _pair(item, i, self.subject)
            xs.append(x)
            ys.append(y)
        try:
            x, y = torch.stack(xs), torch.stack(ys)
        except RuntimeError as error:
            raise _untensorable(error, self.subject) from None
        return (x.float() if x.is_floating_point() else x), (y.long() if _integer(y) else y)


def _pair(item: Any, index: int, subject: str) -> tuple[torch.Tensor, torch.Tensor]:
    """An item's input and label as tensors."""
    if not isinstance(item, tuple | list) or len(item) < 2:
        raise InputError(
            f"each item must be an (input, label) pair (sample {index} is not)", subject=subject
        )
    try:
        return torch.as_tensor(item[0]), torch.as_tensor(item[1])
    except (TypeError, ValueError, RuntimeError) as error:
        # Items torch cannot turn into tensors: PIL images, strings, ...
        raise _untensorable(error, subject, index) from None


def _untensorable(error: Exception, subject: str, index: int | None = None) -> InputError:
    at = f" at sample {index}" if index is not None else ""
    return InputError(
        f"cannot turn the data into tensors{at} ({type(error).__name__}: {error}); "
        "give tensors of equal shape, e.g. images after ToTensor()",
        subject=subject,
    )


def _integer(y: torch.Tensor) -> bool:
    return not (y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool)


def _iterated(items: Iterable[Any], subject: str) -> TensorSamples:
    """A loader over an iterable Dataset, read whole: it cannot be read by index."""
    xs: list[torch.Tensor] = []
    ys: list[torch.Tensor] = []
    try:
        for item in items:
            x, y = _pair(item, len(xs), subject)
            xs.append(x)
            ys.append(y)
        if not xs:
            raise InputError("the data set is empty", subject=subject)
        return TensorSamples(torch.cat(xs), torch.cat(ys), subject)
    except (TypeError, ValueError, RuntimeError) as error:
        if isinstance(error, InputError):
            raise
        raise _untensorable(error, subject) from None
    except (Exception, SystemExit) as error:  # the Dataset's own code may fail in any way
        raise InputError(f"reading the data raised {raised_by(error)}", subject=subject) from None


def as_samples(data: Any, option: str = "data") -> Samples:
    """Turn what a user hands over into :class:`Samples`, named ``option`` in every error.

    A :class:`Samples` is returned as it is; an ``(x, y)`` pair becomes :class:`TensorSamples`
    (checked whole); a map-style ``Dataset`` with ``__len__`` is read lazily, item by item; a
    ``DataLoader`` is read through its map-style ``dataset`` (its batch size and shuffling do not
    matter), or materialised when that dataset is iterable.

    Example:
        >>> dataset = torch.utils.data.TensorDataset(torch.rand(6, 3), torch.arange(6))
        >>> samples = as_samples(dataset)
        >>> len(samples), samples.get([5, 0])[1].tolist()
        (6, [5, 0])

    """
    if isinstance(data, Samples):
        return data
    if isinstance(data, DataLoader):
        if isinstance(data.dataset, IterableDataset):
            return _iterated(data, option)
        data = data.dataset
    if isinstance(data, IterableDataset):
        return _iterated(data, option)
    if isinstance(data, Dataset):
        if not hasattr(data, "__len__"):
            raise InputError("a Dataset must define __len__", subject=option)
        if len(data) == 0:
            raise InputError("the data set is empty", subject=option)
        return DatasetSamples(data, option)
    if isinstance(data, tuple | list) and len(data) == 2:
        try:
            x, y = torch.as_tensor(data[0]), torch.as_tensor(data[1])
        except (TypeError, ValueError, RuntimeError) as error:
            raise _untensorable(error, option) from None
        return TensorSamples(x, y, option)
    raise InputError(
        f"must give a Dataset, a DataLoader or an (x, y) pair (got {type(data).__name__})",
        subject=option,
    )


def as_tensors(data: Any, option: str = "data") -> tuple[torch.Tensor, torch.Tensor]:
    """Turn a Dataset, a DataLoader or an ``(x, y)`` pair into ``(x, y)`` tensors, checked.

    The inputs must be floating point and finite, the labels integers, both with the same number
    of samples, at least one. Failures raise :class:`InputError` whose message starts with
    ``option``.
    """
    try:
        return as_samples(data, option).tensors()
    except InputError as error:
        if error.subject != option:
            raise
        raise InputError(str(error)) from None  # named in the text only, as it always was


def check_pair(
    x: torch.Tensor, y: torch.Tensor, subject: str = "data", index: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` checked: floating, finite inputs ``[n, ...]``, integer labels ``[n]``, n >= 1.

    Args:
        x: inputs.
        y: labels.
        subject: the data's name, the subject of every error.
        index: each row's index in its data set, to name a bad sample (default: the row).

    Returns:
        ``x`` as it is and ``y`` as int64.

    """
    if not x.is_floating_point():
        raise InputError(
            f"inputs must be floating point within the bounds (got {x.dtype}); "
            "for uint8 images divide by 255",
            subject=subject,
        )
    if not _integer(y):
        raise InputError(f"labels must be integers (got {y.dtype})", subject=subject)
    shapes = f"(got {tuple(x.shape)} and {tuple(y.shape)})"
    if y.dim() != 1 or x.dim() < 2:
        raise InputError(f"need inputs [n, ...] and labels [n] {shapes}", subject=subject)
    if x.shape[0] != y.shape[0]:
        raise InputError(
            f"need inputs [n, ...] and labels [n] {shapes}: "
            f"{x.shape[0]} inputs but {y.shape[0]} labels",
            subject=subject,
        )
    if x.shape[0] == 0:
        raise InputError("the data set is empty", subject=subject)
    finite = torch.isfinite(x).flatten(1).all(1)
    if not bool(finite.all()):
        first = int((~finite).nonzero()[0, 0])
        at = first if index is None else int(index[first])
        raise InputError(
            f"inputs contain NaN or infinite values (first at sample {at})", subject=subject
        )
    return x, y.long()


@dataclass(frozen=True)
class Batch:
    """One batch read by :func:`batches`: each row's index in the data set, inputs and labels."""

    index: torch.Tensor
    x: torch.Tensor
    y: torch.Tensor


class _ChunkReader(Dataset):
    """A Dataset indexed by a whole chunk of sample indices: one ``get`` per batch.

    An :class:`InputError` is returned, not raised: a worker process would wrap it in a
    multi-line traceback, and the one-line rule holds for data read in workers too.
    """

    def __init__(self, samples: Samples) -> None:
        self.samples = samples

    def __getitem__(self, chunk: list[int]) -> tuple[torch.Tensor, ...] | InputError:
        try:
            x, y = self.samples.get(chunk)
        except InputError as error:
            return error
        return torch.tensor(chunk, dtype=torch.long), x, y


def batches(
    samples: Samples,
    indices: torch.Tensor | Sequence[int],
    batch_size: int,
    *,
    workers: int = 0,
    pin_memory: bool = False,
) -> Iterator[Batch]:
    """Batches of the samples at ``indices``, in that order, ``batch_size`` each (the last less).

    They are read through a torch ``DataLoader`` (the index chunks as its sampler, ``workers``
    processes, pinned memory when asked and there is a GPU). Each batch is checked as it
    arrives: floating-point, finite inputs (the error names the first bad sample's index),
    integer labels ``[k]``, and the same input shape as the first batch. The bounds are not
    checked here.

    Example:
        >>> samples = TensorSamples(torch.rand(5, 2), torch.arange(5))
        >>> [b.index.tolist() for b in batches(samples, [4, 0, 2], 2)]
        [[4, 0], [2]]

    """
    order = [int(i) for i in (indices.tolist() if isinstance(indices, torch.Tensor) else indices)]
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    on_device = isinstance(samples, TensorSamples) and samples.x.device.type != "cpu"
    loader = DataLoader(
        _ChunkReader(samples),
        sampler=chunks,
        batch_size=None,
        num_workers=0 if on_device else workers,
        pin_memory=pin_memory and not on_device and torch.cuda.is_available(),
    )
    shape: tuple[int, ...] | None = None
    for item in loader:
        if isinstance(item, InputError):
            raise item
        index, x, y = item
        x, y = check_pair(x, y, samples.subject, index)
        if shape is None:
            shape = tuple(x.shape[1:])
        elif tuple(x.shape[1:]) != shape:
            raise InputError(
                f"sample {int(index[0])} has shape {tuple(x.shape[1:])} but the first batch's "
                f"samples have {shape}; give inputs of one shape",
                subject=samples.subject,
            )
        yield Batch(index=index, x=x, y=y)
