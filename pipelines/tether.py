"""Run a command whose whole process tree stops with the step that started it.

    python pipelines/tether.py PARENT_PID GRACE_SECONDS -- COMMAND [ARG...]

An asset runs ``dvc repro``, which runs ``$SHELL -c "byol <stage>"``. Killing only the
process Dagster started would leave the shell and ``byol`` running unseen, holding DVC's
repository lock. So the asset starts this tether, as the leader of a new session, instead.
The tether:

- runs COMMAND in its own process group, which every process below COMMAND joins, and
  which a signal to the run's own group (``kill -9`` of the daemon's group, Ctrl-C in a
  terminal) does not reach, so that the tether is still there to clean up;
- asks the kernel to send it SIGTERM when its parent (the step process) dies, even by
  ``kill -9`` (Linux ``PR_SET_PDEATHSIG``), and stops at once if the parent is already gone;
- on SIGTERM, SIGINT or SIGHUP stops the group: SIGINT first, which ``byol`` answers by
  removing what it half wrote and DVC by releasing its lock, then SIGKILL for whatever is
  left after GRACE_SECONDS;
- exits with COMMAND's status (128 + N when a signal N ended it), after killing any
  process still left in the group, so nothing outlives it.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> bool:
    """SIGTERM to this process when ``parent`` dies; False if it is gone already."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the step's own handler still stops the group
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


def group_members(group: int) -> list[int]:
    """Pids in process group ``group``, except this process and zombies."""
    members = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        found = proc_stat(proc.name)
        if found is not None and found[1] == group and found[0] != "Z":
            members.append(int(proc.name))
    return members


def signal_members(group: int, signum: int) -> bool:
    """Send ``signum`` to every other process in ``group``; False when there was none."""
    members = group_members(group)
    for pid in members:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass
    return bool(members)


def stop_group(child: subprocess.Popen, grace: float) -> None:
    """SIGINT to the group, then SIGKILL to whatever is left once ``grace`` seconds have passed."""
    group = os.getpgrp()
    signal_members(group, signal.SIGINT)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and (child.poll() is None or group_members(group)):
        time.sleep(0.1)
    signal_members(group, signal.SIGKILL)


def main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[2] != "--":
        print("usage: python pipelines/tether.py PARENT_PID GRACE_SECONDS -- COMMAND [ARG...]", file=sys.stderr)
        return 2
    parent, grace, command = int(argv[0]), float(argv[1]), argv[3:]
    stopping = []

    def on_signal(signum, frame):
        stopping.append(signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, on_signal)
    if not die_with_parent(parent):
        return 128 + signal.SIGTERM
    try:
        child = subprocess.Popen(command)
    except FileNotFoundError:
        print(f"{command[0]}: command not found", file=sys.stderr)
        return 127
    while child.poll() is None and not stopping:
        try:
            child.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            pass
    if stopping:
        stop_group(child, grace)
    child.wait()
    signal_members(os.getpgrp(), signal.SIGKILL)  # a straggler that outlived its parent
    code = child.returncode
    return 128 - code if code < 0 else code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
