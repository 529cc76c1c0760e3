"""Linux process plumbing, shared by the training launcher (byol_core.train.distributed) and the
pipelines' tether and run monitor.

Standard library only: pipelines/tether.py runs as a small script beside every asset's
``dvc repro`` and must start in an instant, so nothing here may import torch or numpy.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

PR_SET_PDEATHSIG = 1


def die_with_parent(signum: int, parent: int) -> bool:
    """Have the kernel send ``signum`` to this process when its parent dies, even by
    ``kill -9`` (Linux ``PR_SET_PDEATHSIG``; elsewhere nothing is asked). ``parent`` is the
    parent's pid, read before the call: False when it is gone already, since the request
    came too late to take hold."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signum)
    except (OSError, AttributeError):  # not Linux: no such request
        pass
    return os.getppid() == parent


def proc_stat(pid: int | str) -> tuple[str, int] | None:
    """A process's state letter ("Z": a zombie) and process group, from /proc; None when it
    is gone. The name in parentheses may hold spaces or parentheses, so split after the last one."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()  # state, ppid, pgrp, ...
        return fields[0], int(fields[2])
    except (OSError, IndexError, ValueError):
        return None


def alive(pid: int | str) -> bool:
    """Whether a process with that pid runs (a zombie does not)."""
    found = proc_stat(pid)
    return found is not None and found[0] != "Z"
