"""`make serve` with workers, for real: scripts/serve.sh with BYOL_WORKERS=2 starts Redis and
two Celery workers beside PostgreSQL, the daemon and the webserver, each worker in a clone of
the project of its own that shares only the DVC remote (a folder here). The retrain job,
launched as the launchpad does, runs pretraining in the gpu worker's clone and every other
stage in the cpu worker's, none in the project itself; `make stop` leaves no process behind."""

import os
import shutil
import time

from conftest import ROOT, TINY_DVC, dvc, git, make_project
from helpers.devserver import free_port
from test_serve import Served, _processes

STAGES = ("scan", "ingest", "pretrain", "evaluate", "export", "embed")


def test_serve_with_two_workers_runs_pretraining_on_the_gpu_one_and_the_rest_on_the_cpu_one(tmp_path):
    project = make_project(tmp_path / "project", TINY_DVC)
    shutil.copytree(ROOT / "pipelines", project / "pipelines", ignore=shutil.ignore_patterns("__pycache__"))
    dvc(project, "remote", "add", "--local", "shared", str(tmp_path / "remote"))
    git(project, "add", "-A")
    git(project, "commit", "-qm", "project")
    state = tmp_path / "state"
    server = Served(project, state)
    server.env.update(BYOL_WORKERS="2", BYOL_DVC_REMOTE="shared", BYOL_REDIS_PORT=str(free_port()))
    groups: dict[str, int] = {}
    try:
        server.start()
        status = server.serve("status")
        for name in ("redis", "worker-1", "worker-2", "daemon", "webserver"):
            assert f"{name} runs" in status, status
        gpu, cpu = state / "workers" / "worker-1", state / "workers" / "worker-2"
        assert (gpu / ".git").is_dir() and (cpu / ".dvc" / "config.local").is_file()
        run_id = server.launch_job("retrain")  # as the launchpad does
        assert server.wait([run_id], 900) == {run_id: "SUCCESS"}, server.log_tail()
        said = server.messages(run_id)
        where = {}
        for text in said:
            for stage in STAGES:
                if text.startswith(f"running `repro --single-item {stage} --pull") and "` in " in text:
                    where[stage] = text.rsplit("` in ", 1)[1]  # (scan also says --no-run-cache)
        assert where == {"scan": str(cpu), "ingest": str(cpu), "pretrain": str(gpu), "evaluate": str(cpu),
                         "export": str(cpu), "embed": str(cpu)}, where
        assert not any(f" in {project}" in text for text in said)
        groups = {path.stem: int(path.read_text()) for path in state.glob("*.pid")}
        assert {"redis", "worker-1", "worker-2"} <= set(groups), groups
    finally:
        server.serve("stop")
        deadline = time.monotonic() + 30
        while (_processes(state) or _alive(groups)) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = _processes(state) + _alive(groups)
        server.serve("destroy")
    assert not left, left


def _alive(groups: dict[str, int]) -> list[str]:
    """The names whose process group (serve.sh starts each in one of its own) still has a process."""
    found = []
    for name, pid in groups.items():
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            continue
        except PermissionError:
            pass
        found.append(name)
    return found
