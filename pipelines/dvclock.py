"""DVC's lock table (.dvc/tmp/rwlock) put right after a dvc was killed while writing it.

DVC rewrites that file in place when a stage starts and ends (dvc/rwlock.py opens it for
writing, then dumps the JSON). A dvc killed between the two (SIGKILL once a stop's grace is
over, a machine that goes down) leaves it empty or cut short, and every later dvc command in the
project fails with "Unable to read RWLock-file ... JSON structure is corrupted" until someone
deletes it. The table only names live dvc processes and the paths they hold, and DVC itself
drops the entries of dead ones; so when no dvc process works in the project any more, an
unreadable table is replaced by an empty one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

EMPTY = {"read": {}, "write": {}}


def table(root: Path) -> Path:
    return root / ".dvc" / "tmp" / "rwlock"


def dvc_processes(root: Path) -> list[int]:
    """Pids of live processes other than this one that run a ``dvc`` command (an argument
    named dvc) with their working folder in ``root``."""
    root = root.resolve()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
            if not any(os.path.basename(arg) == b"dvc" for arg in args):
                continue
            cwd = Path(os.readlink(proc / "cwd"))
        except OSError:
            continue
        if cwd == root or root in cwd.parents:
            found.append(int(proc.name))
    return found


def heal(root: Path) -> str | None:
    """Replace an unreadable lock table of the project at ``root`` by an empty one when no dvc
    process works there. Returns what was done, or None (readable, absent, or in use)."""
    path = table(root)
    try:
        json.loads(path.read_text(encoding="utf-8"))
        return None
    except OSError:
        return None  # absent (DVC makes it) or not for this process to read: left to DVC
    except (ValueError, UnicodeDecodeError):
        pass
    if dvc_processes(root):
        return None
    temp = path.with_name(f".rwlock.{os.getpid()}")
    temp.write_text(json.dumps(EMPTY), encoding="utf-8")
    os.replace(temp, path)
    return (f"DVC's lock table {path.relative_to(root)} was unreadable (a dvc killed while writing it) and no dvc "
            "process works in the project: it was replaced by an empty one")
