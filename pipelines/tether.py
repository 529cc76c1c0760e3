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

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the project beside it, not another install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from byol_core.io.proc import die_with_parent, proc_stat  # noqa: E402 - the standard library alone


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
    # Not Linux: no such request, and the step's own handler still stops the group.
    if not die_with_parent(signal.SIGTERM, parent):
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
