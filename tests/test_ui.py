"""The UI end to end: `dagster dev` on a free local port over a scratch copy of the
project; a run launched through the webserver's GraphQL API as the UI's "Materialize all"
does; then ten runs at once, which take turns in the "dvc" pool instead of failing on
DVC's repository lock; and `make ui` stopped mid-pretrain, which leaves no process behind."""

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import ROOT, TINY_DVC, edit_params, make_project
from helpers.devserver import DagsterDev, Webserver, free_port, wait_for_webserver, working_in
from pipelines.checks import CHECKS
from pipelines.tether import group_members

KEYS = ["prepared_dataset", "byol_encoder", "linear_eval", "onnx_encoder", "image_embeddings"]
CHECK_NAMES = {spec.asset_key.to_user_string(): spec.name for check in CHECKS for spec in check.check_specs}


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    root = make_project(tmp_path_factory.mktemp("ui") / "project", TINY_DVC)
    with DagsterDev(root, root.parent / "dagster-dev.log") as server:
        yield server


def test_materialize_all_through_the_webserver(ui):
    run_id = ui.materialize_all(KEYS, CHECK_NAMES)
    status = ui.wait([run_id], timeout=600)[run_id]
    assert status == "SUCCESS", ui.log_tail()
    for key in KEYS:
        found = ui.latest_materialization(key)
        assert found["runId"] == run_id
        assert found["metadata"]["dvc stage"]["text"] == "ran"
    assert ui.latest_materialization("prepared_dataset")["metadata"]["train images"]["intValue"] == 256
    assert 0.0 <= ui.latest_materialization("linear_eval")["metadata"]["linear top-1"]["floatValue"] <= 1.0
    events = ui.event_types(run_id)
    assert events.count("AssetCheckEvaluationEvent") == 3 and "ExecutionStepFailureEvent" not in events


def test_ten_runs_at_once_take_turns_in_the_dvc_pool(ui):
    run_ids = [ui.materialize_all(KEYS, CHECK_NAMES) for _ in range(10)]
    statuses = ui.wait(run_ids, timeout=900)
    assert list(statuses.values()) == ["SUCCESS"] * 10, ui.log_tail()
    for run_id in run_ids:
        events = ui.event_types(run_id)
        assert "ExecutionStepFailureEvent" not in events and "ExecutionStepUpForRetryEvent" not in events
    assert "blocked by global concurrency limits" in ui.log_path.read_text()  # the pool did the queueing


def figure_server(port: int) -> bool:
    """Whether something still answers on the figure server's port."""
    import socket

    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


class Ui(Webserver):
    """`make ui` (scripts/ui.sh) over a scratch project, stopped as a user stops it: a signal
    to the script."""

    def __init__(self, project: Path, home: Path, log: Path):
        self.log, self.port, self.figure_port = log, free_port(), free_port()
        self.env = {**os.environ, "DAGSTER_HOME": str(home), "BYOL_PROJECT_DIR": str(project),
                    "BYOL_FIGURE_PORT": str(self.figure_port)}
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen([str(ROOT / "scripts" / "ui.sh"), "--port", str(self.port)], cwd=ROOT,
                                        env=self.env, stdout=self.log.open("a"), stderr=subprocess.STDOUT)
        assert wait_for_webserver(self.url, 180, lambda: self.process.poll() is None), self.log.read_text()[-3000:]

    def stop(self, signum: int) -> list[int]:
        """Signal the script; returns what is left of dg dev's process group once it exits."""
        self.process.send_signal(signum)
        # ui.sh waits at most 45 s in all (10 for Dagster, 5 for the kernel, 30 for the steps'
        # tethers); its own ps and /proc scans take longer on a loaded machine.
        self.process.wait(timeout=120)
        group = int(re.findall(r"\(group (\d+)\)", self.log.read_text())[-1])
        return group_members(group)


def test_stopping_the_ui_mid_pretrain_stops_every_process_and_the_run_is_marked_failed(tmp_path):
    project = make_project(tmp_path / "project", TINY_DVC)
    edit_params(project, "pretrain.epochs", 40)  # long enough to be caught mid-way
    ui = Ui(project, tmp_path / "home", tmp_path / "ui.log")
    ui.start()
    try:
        run_id = ui.materialize_all(KEYS, CHECK_NAMES)
        deadline = time.monotonic() + 300
        while not working_in(project, b"byol"):
            assert time.monotonic() < deadline, ui.log.read_text()[-3000:]
            time.sleep(0.5)
        time.sleep(3)
        left = ui.stop(signal.SIGTERM)
    finally:
        if ui.process.poll() is None:
            ui.process.kill()
    assert left == [], f"dg dev's group outlived the stop: {left}"
    assert not figure_server(ui.figure_port), "the figure server outlived the stop"
    assert not working_in(project, b"byol") and not working_in(project, b"dvc")
    status = subprocess.run([str(ROOT / ".venv" / "bin" / "dvc"), "status", "pretrain"], cwd=project,
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stdout + status.stderr  # DVC's lock is free
    # After a restart (the history survived it), the run is not left "started".
    ui.start()
    try:
        deadline = time.monotonic() + 120
        while ui.run(run_id)["status"] not in ("FAILURE", "CANCELED"):
            assert time.monotonic() < deadline, f"{ui.run(run_id)}\n{ui.log.read_text()[-3000:]}"
            time.sleep(3)
    finally:
        assert ui.stop(signal.SIGINT) == []
