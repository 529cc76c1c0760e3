"""One run at a time: an advisory lock on a stage's own folder.

``flock`` on the folder itself, so no lock file is left behind, and the kernel drops the lock
when its holder dies, however it dies (``kill -9`` included): a stale lock cannot exist. A
second run finds the holder's pid in ``/proc/locks`` to say who holds it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from byol_core.errors import ByolError


def _holder(fd: int) -> int | None:
    """The pid holding a flock on the file behind ``fd`` (Linux), else None."""
    info = os.fstat(fd)
    wanted = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    try:
        with open("/proc/locks") as handle:
            for line in handle:
                fields = line.split()
                if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == wanted:
                    return int(fields[4])
    except (OSError, ValueError):
        pass
    return None


@contextlib.contextmanager
def held(folder: Path, what: str) -> Iterator[None]:
    """Hold the lock on ``folder`` (created if missing) for the block; if another process
    holds it, fail at once with its pid."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise ByolError(f"cannot use {folder}: {exc.strerror}. Check the path in params.yaml and its "
                        "permissions.") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _holder(fd)
            who = f" (pid {pid})" if pid else ""
            raise ByolError(f"{what} is already running in this project{who}: it holds {folder}. Wait for it "
                            "to finish or stop it, then run again.") from None
        yield
    finally:
        os.close(fd)
