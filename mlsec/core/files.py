"""Durable file writes: a crash or SIGKILL leaves the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` through a fsynced temporary file beside it.

    A symbolic link is written through: the file it points to is replaced and the link kept. The
    temporary file lies beside that file, so the final rename never crosses file systems. A file
    that already exists keeps its permission bits; a new one gets ``0o666`` less the umask, as an
    ordinary ``open()`` would give it. When anything fails, even an interrupt, the temporary file
    is removed and the old file is left as it was.

    Args:
        path: the file to write, or a link to it.
        data: the content; ``str`` is encoded as UTF-8.

    Raises:
        OSError: the folder cannot be written, the disk is full, ...

    """
    target = Path(os.path.realpath(path))
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)  # mkstemp makes files private
            fh.write(data.encode("utf-8") if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
