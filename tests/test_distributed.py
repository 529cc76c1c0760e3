"""Steps on other workers, for real: PostgreSQL (the instance), Redis (the Celery broker) and
two Celery workers of the project (pipelines/workers.py), one on the ``gpu`` queue and one on
``cpu``, each in a clone of its own. The clones share nothing but the DVC remote (an sshd of
the test's own on loopback) and the pretraining resume store (paths.resume, a folder both
name). The orchestrator is a process of its own that runs the retrain job with
BYOL_EXECUTOR=celery, from another checkout (this one), so the workers must import their own
clone's code whatever working directory its code pointer names.

- One run materializes the five assets; pretraining ran on the gpu worker, the rest on the cpu
  worker, and the evaluation equals a one-machine `dvc repro` on the same params.
- A second run, on two fresh workers with fresh clones, restores every stage from DVC's
  run-cache through the remote and reruns none.
- kill -9 of the gpu worker mid-pretrain: the run fails, naming the lost worker; re-executed
  from failure on another gpu worker (a third clone), pretraining resumes from the checkpoint
  in the shared store instead of epoch 0.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import torch
from dagster._core.instance.ref import InstanceRef

from conftest import ROOT, SOURCE, TINY_DVC, dvc, edit_params, git, make_project
from helpers.devserver import working_in
from helpers.services import postgres, redis, stop_group
from pipelines.checks import MEASURED_IN, SUBJECT
from pipelines.resources import LOCK_ENTRY, RESTORED, RESTORED_FROM
from test_remote import machine, remote  # noqa: F401  (the sshd fixture)

KEYS = ("prepared_dataset", "byol_encoder", "linear_eval", "onnx_encoder", "image_embeddings")
STAGES = {"prepared_dataset": "ingest", "byol_encoder": "pretrain", "linear_eval": "evaluate",
          "onnx_encoder": "export", "image_embeddings": "embed"}
LOST_SECONDS = 10  # BYOL_WORKER_LOST_SECONDS for the orchestrator here (60 by default)


class Cluster:
    """The servers, the origin repository the clones come from, and the processes started."""

    def __init__(self, base: Path, remote_url: str, key: Path, broker: str, pg_env: dict):
        self.base, self.remote_url, self.key = base, remote_url, key
        self.resume = base / "resume-store"  # the shared resume store: one folder every clone names
        self.env = {**os.environ, **pg_env, "BYOL_CELERY_BROKER": broker, "BYOL_EXECUTOR": "celery"}
        for name in ("PYTHONPATH", "BYOL_PROJECT_DIR", "BYOL_DVC_REMOTE", "DAGSTER_HOME"):
            self.env.pop(name, None)
        self.home = self.dagster_home(base / "orchestrator-home")
        self.workers: dict[str, subprocess.Popen] = {}
        self.origin = make_project(base / "origin", {**TINY_DVC, "paths.resume": str(self.resume)})
        shutil.copytree(ROOT / "pipelines", self.origin / "pipelines", ignore=shutil.ignore_patterns("__pycache__"))
        git(self.origin, "add", "-A")
        git(self.origin, "commit", "-qm", "project")

    @staticmethod
    def dagster_home(folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / "scripts" / "serve-dagster.yaml", folder / "dagster.yaml")
        return folder

    def clone(self, name: str, data: bool) -> Path:
        """A worker's clone: the repository, the remote in its config.local, and (``data``) the
        source files, which only the machine that ingests needs."""
        root = self.base / name
        subprocess.run(["git", "clone", "-q", str(self.origin), str(root)], check=True)
        machine(root, self.remote_url, self.key)
        if data:
            shutil.copytree(self.origin / SOURCE, root / SOURCE)
        return root

    def start_worker(self, name: str, clone: Path, queue: str) -> None:
        env = {**self.env, "PYTHONPATH": str(clone), "BYOL_PROJECT_DIR": str(clone), "BYOL_DVC_REMOTE": "store",
               "DAGSTER_HOME": str(self.dagster_home(clone / ".dagster-home"))}
        log = self.base / f"{name}.log"
        self.workers[name] = subprocess.Popen(
            [sys.executable, "-m", "pipelines.workers", "--queues", queue, "--name", name], cwd=clone, env=env,
            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 180
        while " ready." not in log.read_text():
            assert self.workers[name].poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)

    def stop_workers(self) -> None:
        for process in self.workers.values():
            stop_group(process)
        self.workers.clear()

    def orchestrate(self, *args: str) -> subprocess.Popen:
        env = {**self.env, "PYTHONPATH": str(ROOT), "DAGSTER_HOME": str(self.home),
               "BYOL_WORKER_LOST_SECONDS": str(LOST_SECONDS)}
        return subprocess.Popen([sys.executable, str(ROOT / "tests" / "helpers" / "orchestrate.py"), *args],
                                cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)

    def run(self, *args: str, timeout: float = 900) -> tuple[dict, float]:
        started = time.monotonic()
        process = self.orchestrate(*args)
        try:
            out, err = process.communicate(timeout=timeout)
        finally:
            stop_group(process)
        lines = [line for line in out.splitlines() if line.startswith("{")]
        assert lines, f"{out[-3000:]}\n{err[-6000:]}\n{self.worker_logs()}"
        return json.loads(lines[-1]), time.monotonic() - started

    def worker_logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.base.glob("*.log")))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, remote):  # noqa: F811
    url, key, _ = remote
    base = tmp_path_factory.mktemp("distributed")
    with postgres() as pg_env, redis(base / "redis") as broker, pytest.MonkeyPatch.context() as patch:
        for name, value in pg_env.items():
            patch.setenv(name, value)  # for this process's view of the instance
        cluster = Cluster(base, url, key, broker, pg_env)
        try:
            yield cluster
        finally:
            cluster.stop_workers()


def instance_of(cluster: Cluster) -> dg.DagsterInstance:
    return dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(cluster.home)))


def celery_workers(instance: dg.DagsterInstance, run_id: str) -> dict[str, str]:
    """Step key -> the name of the Celery worker that ran it (its engine event says)."""
    found = {}
    for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
        event = record.dagster_event
        worker = event.engine_event_data.metadata.get("Celery worker") if event.engine_event_data else None
        if worker is not None:
            found[event.step_key] = worker.value
    return found


def materializations(instance: dg.DagsterInstance, run_id: str) -> dict[str, dict]:
    found = {}
    for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION):
        materialization = record.dagster_event.step_materialization_data.materialization
        found[materialization.asset_key.to_user_string()] = materialization.metadata
    return found


def evaluations(instance: dg.DagsterInstance, run_id: str) -> dict:
    """Check name -> its evaluation in the run."""
    return {record.dagster_event.event_specific_data.check_name: record.dagster_event.event_specific_data
            for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)}


def messages(instance: dg.DagsterInstance, run_id: str) -> list[tuple[float, str]]:
    return [(record.timestamp, record.user_message or "") for record in instance.all_logs(run_id)]


def timeline(instance: dg.DagsterInstance, run_id: str) -> str:
    """The run's events, seconds from its first: where a run's time went."""
    records = instance.all_logs(run_id)
    first = records[0].timestamp if records else 0.0
    lines = []
    for record in records:
        event = record.dagster_event
        kind = event.event_type_value if event else "LOG"
        text = " ".join((record.user_message or "").split())[:110]
        lines.append(f"{record.timestamp - first:7.1f}s {record.step_key or '':22s} {kind:24s} {text}")
    return "\n".join(lines)


def transfers(made: dict[str, dict], ran_on: dict[str, str]) -> dict[str, tuple[int, int]]:
    """Stage -> (bytes of the outputs it pushed, bytes of its inputs that its worker did not
    hold yet, which came from the remote), from the dvc.lock entries the run recorded. (An
    asset check on the same worker may have pulled them just before: the bytes are the same.)"""
    entries = {key: made[key][LOCK_ENTRY].value["entry"] for key in KEYS}
    data = {out["path"] for entry in entries.values() for out in entry["outs"]}
    held: dict[str, set] = {}
    moved = {}
    for key in KEYS:  # in run order
        entry, have = entries[key], held.setdefault(ran_on[key], set())
        pulled = sum(dep.get("size", 0) for dep in entry["deps"] if dep["path"] in data and dep["path"] not in have)
        moved[STAGES[key]] = (sum(out.get("size", 0) for out in entry["outs"]), pulled)
        have.update(item["path"] for item in entry["deps"] + entry["outs"])
    return moved


def test_steps_run_on_their_queues_workers_restore_from_the_run_cache_and_a_lost_worker_resumes(cluster, tmp_path):
    # The one-machine reference: `dvc repro` of every stage on the same params.
    reference = make_project(tmp_path / "one-machine", TINY_DVC)
    started = time.monotonic()
    dvc(reference, "repro")
    one_machine = time.monotonic() - started

    gpu, cpu = cluster.clone("gpu-1", data=False), cluster.clone("cpu-1", data=True)
    assert not (gpu / SOURCE).exists()  # the gpu machine never sees the raw files
    cluster.start_worker("gpu", gpu, "gpu")
    cluster.start_worker("cpu", cpu, "cpu")
    first, distributed = cluster.run("run")
    instance = instance_of(cluster)
    assert first["success"], cluster.worker_logs()
    ran_on = celery_workers(instance, first["run_id"])
    assert ran_on["byol_encoder"].startswith("gpu@"), ran_on
    assert all(worker.startswith("cpu@") for step, worker in ran_on.items() if step != "byol_encoder"), ran_on
    assert set(KEYS) <= set(ran_on)
    made = materializations(instance, first["run_id"])
    assert sorted(made) == sorted(KEYS)
    assert all(made[key]["dvc stage"].value == "ran" for key in KEYS), {k: m["dvc stage"].value for k, m in made.items()}
    # Each worker ran the stage in its own clone, with its own code (not the orchestrator's checkout).
    said = [text for _, text in messages(instance, first["run_id"])]
    assert any(f"repro --single-item pretrain --pull` in {gpu}" in text for text in said), said
    assert any(f"repro --single-item evaluate --pull` in {cpu}" in text for text in said), said
    assert not (gpu / "metrics" / "eval.json").exists()  # evaluated on the cpu machine
    assert json.loads((cpu / "metrics" / "eval.json").read_text()) == \
        json.loads((reference / "metrics" / "eval.json").read_text())
    moved = transfers(made, ran_on)
    assert moved["pretrain"][1] > 0 and moved["ingest"][1] == 0  # pretrain pulled the prepared data
    for key in KEYS:
        pushed, pulled = moved[STAGES[key]]
        print(f"{STAGES[key]}: on {ran_on[key]}, pushed {made[key]['dvc pushed files'].value} files, {pushed} bytes, "
              f"in {made[key]['dvc push seconds'].value}s; pulled {pulled} bytes of inputs new to its worker")

    # Two fresh workers with fresh clones: everything comes back from the run-cache.
    cluster.stop_workers()
    gpu, cpu = cluster.clone("gpu-2", data=False), cluster.clone("cpu-2", data=True)
    cluster.start_worker("gpu", gpu, "gpu")
    cluster.start_worker("cpu", cpu, "cpu")
    second, restoring = cluster.run("run")
    assert second["success"], cluster.worker_logs()
    print(f"the second run, {restoring:.1f}s from the orchestrator's start:\n{timeline(instance, second['run_id'])}")
    made = materializations(instance, second["run_id"])
    assert sorted(made) == sorted(KEYS)
    for key in KEYS:
        assert made[key]["dvc stage"].value == RESTORED and not made[key]["recomputed"].value, (key, made[key])
        # from the first run's dvc.lock entry, with nothing to push
        assert made[key][RESTORED_FROM].value == f"run {first['run_id']}", (key, made[key][RESTORED_FROM])
        assert made[key]["dvc pushed files"].value == 0, (key, made[key])
    # The checks of the same published outputs take the first run's figures, measured once.
    checked = evaluations(instance, second["run_id"])
    assert set(checked) == {"encoder_not_collapsed", "probe_beats_random_init", "onnx_matches_pytorch"}, checked
    for name in ("encoder_not_collapsed", "probe_beats_random_init", "onnx_matches_pytorch"):
        assert checked[name].passed and checked[name].metadata[MEASURED_IN].value == first["run_id"], checked[name]
        assert checked[name].metadata[SUBJECT] == evaluations(instance, first["run_id"])[name].metadata[SUBJECT]
    assert json.loads((cpu / "metrics" / "eval.json").read_text()) == \
        json.loads((reference / "metrics" / "eval.json").read_text())

    # A longer pretraining, its gpu worker killed mid-way.
    edit_params(cluster.origin, "pretrain.epochs", 40)
    git(cluster.origin, "commit", "-qam", "longer pretraining")
    git(gpu, "pull", "-q")
    state = cluster.resume / "pretrain-state.pt"
    orchestrator = cluster.orchestrate("run", "byol_encoder")
    try:
        deadline = time.monotonic() + 300
        saved = None
        while saved is None or saved["epoch"] < 2:
            assert time.monotonic() < deadline and orchestrator.poll() is None, cluster.worker_logs()
            time.sleep(0.5)
            if state.is_file() and working_in(gpu, b"byol", b"pretrain"):
                saved = torch.load(state, weights_only=True)
        os.killpg(cluster.workers["gpu"].pid, signal.SIGKILL)
        killed = time.time()
        cluster.workers.pop("gpu").wait(timeout=30)
        out, err = orchestrator.communicate(timeout=LOST_SECONDS + 120)
    finally:
        stop_group(orchestrator)
    noticed = time.time() - killed
    lost = json.loads([line for line in out.splitlines() if line.startswith("{")][-1])
    assert not lost["success"]
    failure = [record.dagster_event.step_failure_data.error.message for record in
               instance.all_logs(lost["run_id"], of_type=dg.DagsterEventType.STEP_FAILURE)]
    assert len(failure) == 1 and "celery worker gpu@" in failure[0] and "has not answered" in failure[0], failure
    deadline = time.monotonic() + 60
    while working_in(gpu, b"byol", b"pretrain") or working_in(gpu, b"dvc"):  # the tether stops them
        assert time.monotonic() < deadline, "byol or dvc outlived the killed worker"
        time.sleep(0.5)
    saved = torch.load(state, weights_only=True)  # the last checkpoint the killed worker wrote

    spare = cluster.clone("gpu-3", data=False)  # another gpu machine, which never trained
    cluster.start_worker("gpu", spare, "gpu")
    retry, _ = cluster.run("retry", lost["run_id"])
    assert retry["success"], cluster.worker_logs()
    assert celery_workers(instance, retry["run_id"])["byol_encoder"].startswith("gpu@")
    said = messages(instance, retry["run_id"])
    resumed = [stamp for stamp, text in said if "resuming from" in text and f"after epoch {saved['epoch']}" in text]
    assert resumed, [text for _, text in said]
    # Resumed, not restarted: the curve's first epochs are the checkpoint's, wall times included.
    curve = pd.read_csv(spare / "metrics" / "pretrain_curve.csv")
    assert len(curve) == 40
    assert curve.seconds.tolist()[:saved["epoch"]] == [row["seconds"] for row in saved["history"]]
    assert not state.exists()  # finished: nothing left to resume
    print(f"one machine (dvc repro): {one_machine:.0f}s; distributed run: {distributed:.0f}s; "
          f"second run on fresh workers (run-cache): {restoring:.0f}s; worker death -> run failed: {noticed:.0f}s, "
          f"-> training resumed on another worker: {resumed[0] - killed:.0f}s (after epoch {saved['epoch']} of 40)")


# The executor's choice, its settings and its watch over the workers, without servers

def test_the_executor_is_celery_when_asked_with_its_settings_from_the_environment(monkeypatch):
    from pipelines import k8s, workers
    from pipelines.assets import ASSETS

    monkeypatch.delenv(k8s.EXECUTOR_VARIABLE, raising=False)
    assert k8s.executor() is dg.in_process_executor  # one machine stays the default
    monkeypatch.setenv(workers.BROKER_VARIABLE, "redis://broker.example:6379/3")
    chosen = k8s.executor("celery")
    assert chosen.name == "celery"
    config = workers.celery_config()
    assert config["broker"] == config["backend"] == "redis://broker.example:6379/3"
    assert config["config_source"]["task_default_queue"] == workers.CPU_QUEUE
    # Pretraining goes to the gpu queue, every other stage to cpu (the asset checks by default).
    tags = {asset.key.to_user_string(): asset.op.tags.get(workers.QUEUE_TAG) for asset in ASSETS}
    assert tags == {"prepared_dataset": "cpu", "byol_encoder": "gpu", "linear_eval": "cpu", "onnx_encoder": "cpu",
                    "image_embeddings": "cpu"}, tags

    monkeypatch.setenv(workers.BROKER_VARIABLE, "localhost")
    with pytest.raises(dg.DagsterInvariantViolationError, match="BYOL_CELERY_BROKER='localhost' is not a broker URL"):
        k8s.executor("celery")
    monkeypatch.delenv(workers.BROKER_VARIABLE)
    monkeypatch.setenv(workers.LOST_VARIABLE, "soon")
    with pytest.raises(dg.DagsterInvariantViolationError, match="BYOL_WORKER_LOST_SECONDS='soon' is not a number"):
        k8s.executor("celery")


class FakeResult:
    def __init__(self, state, info=None):
        self.state, self.info = state, info

    def ready(self):
        return False

    def get(self):
        return []


class FakeControl:
    def __init__(self):
        self.alive = True
        self.asked = []

    def ping(self, destination, timeout):
        self.asked.append(destination)
        return [{destination[0]: {"ok": "pong"}}] if self.alive else []


def test_a_started_step_whose_worker_stops_answering_is_lost_and_a_queued_one_is_not(monkeypatch):
    from pipelines import workers

    clock = [1000.0]
    monkeypatch.setattr(workers.time, "monotonic", lambda: clock[0])
    app = type("App", (), {"control": FakeControl()})()
    queued = workers.WatchedResult(FakeResult("PENDING"), app, "byol_encoder", lost_after=30)
    started = workers.WatchedResult(FakeResult("STARTED", {"hostname": "gpu@node7", "pid": 1}), app, "byol_encoder",
                                    lost_after=30)
    for _ in range(3):  # an answering worker keeps its step
        clock[0] += 20
        assert not started.ready() and not queued.ready()
    app.control.alive = False
    clock[0] += 20
    assert not started.ready()  # 20 s without an answer: not yet
    clock[0] += 20
    assert started.ready()  # 40 s > 30 s
    with pytest.raises(workers.WorkerLost, match="celery worker gpu@node7 took step byol_encoder"):
        started.get()
    clock[0] += 600
    assert not queued.ready()  # waiting in the queue for a free worker is no loss
    assert ["gpu@node7"] in app.control.asked and all(d == ["gpu@node7"] for d in app.control.asked)
