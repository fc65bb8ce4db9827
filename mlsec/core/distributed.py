"""Several processes, one job: PyTorch's own ``torch.distributed``, as launched by ``torchrun``.

mlsec does not start processes itself. ``torchrun --nproc-per-node N -m mlsec ...`` starts N copies
and sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address; :func:`start` joins
them into a process group (NCCL on GPUs, gloo on CPUs), one GPU per rank from ``LOCAL_RANK``. A
caller that initialised the group itself (``torch.distributed.init_process_group``) gets it from
:func:`current`. Without either, everything here is the single process: ``Group(0, 1, 0)``, and
the collectives return their argument.

Every collective here moves small Python objects (sample indices, masks, digests), not tensors of
images; the attacks themselves never talk to each other.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from mlsec.errors import InputError

__all__ = [
    "Group",
    "agree",
    "all_gather",
    "broadcast",
    "current",
    "digest",
    "gather_results",
    "launched",
    "start",
    "stop",
]

# How long a collective waits for a rank before failing (a rank that died makes the others stop
# with an error, never hang).
TIMEOUT = timedelta(minutes=30)
_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class Group:
    """A process's place in the job: its rank, the number of ranks, its rank on its node."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that prints, draws progress and writes reports."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """Whether a process group is initialised (collectives talk to other ranks)."""
        return dist.is_available() and dist.is_initialized()


def launched() -> bool:
    """Whether this process was started by ``torchrun`` (its environment variables are set)."""
    return all(name in os.environ for name in _ENV)


def current() -> Group:
    """The initialised default process group, else the single process.

    Launched by ``torchrun`` but not yet joined, the ranks the environment names (so that only
    rank 0 reports an error found before :func:`start`).
    """
    if not (dist.is_available() and dist.is_initialized()):
        if launched():
            try:
                return Group(_env_int("RANK"), _env_int("WORLD_SIZE"), _env_int("LOCAL_RANK"))
            except InputError:
                return Group()
        return Group()
    local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    return Group(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local)


def _env_int(name: str) -> int:
    value = os.environ[name]
    try:
        number = int(value)
    except ValueError:
        raise InputError(f"{name}={value!r} is not an integer; launch with torchrun") from None
    if number < 0:
        raise InputError(f"{name}={value!r} must be >= 0; launch with torchrun")
    return number


def _device_for(group: Group, device: str) -> torch.device:
    """The device of this rank: ``auto``/``cuda`` pick the GPU ``LOCAL_RANK`` when launched."""
    wants_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if not wants_cuda:
        return torch.device(device if device != "auto" else "cpu")
    if not torch.cuda.is_available():
        raise InputError(
            f"rank {group.rank} cannot see a GPU (CUDA is not available in this process); "
            "check CUDA_VISIBLE_DEVICES, or run on the CPU with device cpu"
        )
    if not launched():
        return torch.device("cuda")
    count = torch.cuda.device_count()
    if group.local_rank >= count:
        raise InputError(
            f"rank {group.rank} (local rank {group.local_rank}) has no GPU of its own: this node "
            f"shows {count}; start at most {count} processes per node (--nproc-per-node)"
        )
    torch.cuda.set_device(group.local_rank)
    return torch.device("cuda", group.local_rank)


def start(device: str = "auto") -> tuple[Group, torch.device]:
    """Join the job this process belongs to, if any; returns the group and this rank's device.

    Launched by ``torchrun`` and not yet initialised: initialises the default process group from
    the environment (``nccl`` when the device is a GPU, else ``gloo``). Already initialised: that
    group. Neither: the single process. ``device`` is ``auto``, ``cpu``, ``cuda`` or ``cuda:N``
    (an explicit ``cuda:N`` is taken as given).
    """
    if dist.is_available() and dist.is_initialized():
        group = current()
    elif launched():
        group = Group(
            rank=_env_int("RANK"), world=_env_int("WORLD_SIZE"), local_rank=_env_int("LOCAL_RANK")
        )
    else:
        group = Group()
    resolved = torch.device(device) if device.startswith("cuda:") else _device_for(group, device)
    if launched() and not (dist.is_available() and dist.is_initialized()):
        if not dist.is_available():
            raise InputError("this torch build has no torch.distributed; run one process")
        backend = "nccl" if resolved.type == "cuda" else "gloo"
        options: dict[str, Any] = {"backend": backend, "timeout": TIMEOUT}
        if resolved.type == "cuda":
            options["device_id"] = resolved
        dist.init_process_group(**options)
    return group, resolved


def all_gather(group: Group, obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    if not group.active or group.world == 1:
        return [obj]
    out: list[Any] = [None] * group.world
    dist.all_gather_object(out, obj)
    return out


def broadcast(group: Group, obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not group.active or group.world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def digest(value: Any) -> str:
    """A SHA-256 of ``value`` as canonical JSON (what :func:`agree` compares)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def agree(group: Group, what: str, value: Any) -> None:
    """Raise :class:`InputError` on every rank unless every rank holds the same ``value``.

    ``what`` names it for the message (``"arguments"``, ``"data"``).
    """
    digests = all_gather(group, digest(value))
    differing = [rank for rank, d in enumerate(digests) if d != digests[0]]
    if differing:
        raise InputError(
            f"the ranks were given different {what} (rank {differing[0]} differs from rank 0); "
            "start every rank with the same command and files"
        )


def gather_results(group: Group, work: Callable[[], Any]) -> list[Any]:
    """Every rank's ``work()`` result, in rank order, on every rank.

    A rank whose work raises :class:`InputError` hands the error to the gather instead of
    leaving the others waiting; every rank then raises the first such error (by rank), so the
    job stops with one message, not a hang.
    """
    try:
        mine: tuple[Any, InputError | None] = (work(), None)
    except InputError as raised:
        mine = (None, raised)
    shares = all_gather(group, mine)
    for _, error in shares:
        if error is not None:
            raise error
    return [result for result, _ in shares]


def stop() -> None:
    """Leave the job :func:`start` joined (a no-op when not launched by ``torchrun``)."""
    if launched() and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
