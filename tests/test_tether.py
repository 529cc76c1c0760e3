"""pipelines/tether.py: the process tree below an asset's `dvc repro` stops with the step,
whether the step is interrupted (a signal to the tether) or killed outright (kill -9 of its
parent), and a child that ignores SIGINT is killed after the grace period."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT

TETHER = ROOT / "pipelines" / "tether.py"
# A shell (as DVC runs a stage) whose child writes its pid, then works until stopped.
TREE = """
import os, signal, subprocess, sys, time
if sys.argv[2] == "stubborn":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c",
    "import os, signal, sys, time\\n"
    + ("signal.signal(signal.SIGINT, signal.SIG_IGN)\\n" if sys.argv[2] == "stubborn" else "")
    + "open(sys.argv[1], 'w').write(str(os.getpid()))\\n"
    + "time.sleep(600)", sys.argv[1] + ".grandchild"])
open(sys.argv[1], "w").write(str(os.getpid()))
child.wait()
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_for(path: Path, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while not (path.is_file() and path.read_text()):
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)
    return int(path.read_text())


def _gone(pids: list[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _start(tmp_path: Path, mode: str, grace: float = 5) -> tuple[subprocess.Popen, list[int]]:
    pidfile = tmp_path / "child.pid"
    tether = subprocess.Popen([sys.executable, str(TETHER), str(os.getpid()), str(grace), "--",
                               "sh", "-c", f'{sys.executable} -c "$0" "$1" "$2"', TREE, str(pidfile), mode],
                              start_new_session=True)
    pids = [_wait_for(pidfile), _wait_for(Path(f"{pidfile}.grandchild"))]
    return tether, pids


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_tether_stops_the_whole_tree(tmp_path, signum):
    tether, pids = _start(tmp_path, "normal")
    tether.send_signal(signum)
    assert tether.wait(timeout=10) != 0
    assert _gone(pids, 1), [p for p in pids if _alive(p)]


def test_a_tree_that_ignores_sigint_is_killed_after_the_grace_period(tmp_path):
    tether, pids = _start(tmp_path, "stubborn", grace=1)
    started = time.monotonic()
    tether.terminate()
    tether.wait(timeout=20)
    assert _gone(pids, 1)
    assert time.monotonic() - started >= 1  # SIGINT first, SIGKILL only after the grace period


def test_kill_9_of_the_step_stops_the_tree_below_it(tmp_path):
    """The step process dies without a word: the kernel tells the tether (PR_SET_PDEATHSIG)."""
    pidfile = tmp_path / "child.pid"
    step = subprocess.Popen([sys.executable, "-c", (
        "import os, subprocess, sys, time\n"
        f"subprocess.Popen([sys.executable, {str(TETHER)!r}, str(os.getpid()), '5', '--', 'sh', '-c', "
        f"'{sys.executable} -c \"$0\" \"$1\" \"$2\"', {TREE!r}, {str(pidfile)!r}, 'normal'], start_new_session=True)\n"
        "time.sleep(600)")])
    pids = [_wait_for(pidfile), _wait_for(Path(f"{pidfile}.grandchild"))]
    step.kill()
    step.wait()
    assert _gone(pids, 10), [p for p in pids if _alive(p)]


def test_the_commands_exit_status_passes_through_and_no_straggler_survives(tmp_path):
    straggler = tmp_path / "straggler.pid"
    done = subprocess.run([sys.executable, str(TETHER), str(os.getpid()), "5", "--", "sh", "-c",
                           f"(echo $$ > /dev/null; sleep 600 & echo $! > {straggler}); exit 3"],
                          start_new_session=True, timeout=30)
    assert done.returncode == 3
    assert _gone([int(straggler.read_text())], 5)
    missing = subprocess.run([sys.executable, str(TETHER), str(os.getpid()), "5", "--", str(tmp_path / "no-such")],
                             capture_output=True, text=True, timeout=30)
    assert missing.returncode == 127 and "command not found" in missing.stderr


def test_a_tether_whose_parent_is_already_gone_starts_nothing(tmp_path):
    marker = tmp_path / "ran"
    done = subprocess.run([sys.executable, str(TETHER), "1", "5", "--", "touch", str(marker)], timeout=30)
    assert done.returncode == 128 + signal.SIGTERM and not marker.exists()


# An asset's step, in-process, over a "dvc" whose child takes 3 s to stop on SIGINT.
STEP = """
import sys
import dagster as dg
from pipelines.assets import ASSETS
from pipelines.resources import DvcProject
dg.materialize([ASSETS[0]], raise_on_error=False, instance=dg.DagsterInstance.ephemeral(),
               resources={"dvc": DvcProject(project_dir=sys.argv[1], dvc=sys.argv[2])})
"""
SLOW_DVC = """#!/bin/sh
[ "$1" = status ] && exit 1
exec {python} -c '
import os, signal, sys, time
def slow(signum, frame):
    time.sleep(3)
    sys.exit(130)
signal.signal(signal.SIGINT, slow)
open(sys.argv[1], "w").write(str(os.getpid()))
time.sleep(600)' {pidfile}
"""


def test_a_step_interrupted_twice_ends_only_once_its_tree_is_gone(tmp_path):
    """A cancelled run gets more than one interrupt; the step still waits for the tree."""
    pidfile, dvc = tmp_path / "dvc.pid", tmp_path / "dvc"
    dvc.write_text(SLOW_DVC.format(python=sys.executable, pidfile=pidfile))
    dvc.chmod(0o755)
    step = subprocess.Popen([sys.executable, "-c", STEP, str(tmp_path), str(dvc)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    child = _wait_for(pidfile, timeout=120)
    step.send_signal(signal.SIGINT)
    time.sleep(0.5)
    step.send_signal(signal.SIGINT)  # as Dagster's cancellation thread does
    step.wait(timeout=60)
    assert not _alive(child), "the step ended while its dvc was still stopping"
