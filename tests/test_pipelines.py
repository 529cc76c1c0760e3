"""Dagster on top of the real dvc: in-process materialization of the five assets (the first
runs the scan and ingest stages) on a tiny scratch project, data versions from dvc.lock, metadata, checks, schedule, sensor."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg
import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from byol_core.train.checkpoint import load_encoder, save_encoder
from byol_core.config import load_params
from conftest import ROOT, SOURCE, TINY_DVC, edit_params, make_fashion_files, make_project, rename_param
from pipelines.assets import ASSETS, COMPUTED_IN, OUTSIDE, POOL, RECOMPUTED, byol_encoder, linear_eval
from pipelines.checks import CHECKS, encoder_not_collapsed, onnx_matches_pytorch, probe_beats_random_init
from pipelines.definitions import defs
from pipelines.resources import RESTORED, SKIPPED, DvcProject, StageRun
from pipelines.assets import observe_folder
from pipelines.schedules import RETRAIN_CRON, observation, observe_source_data, source_fingerprint, weekly_retrain

KEYS = ["prepared_dataset", "byol_encoder", "linear_eval", "onnx_encoder", "image_embeddings"]
STAGE_OF = dict(zip(KEYS, ["ingest", "pretrain", "evaluate", "export", "embed"]))


def test_definitions_load_with_five_assets_three_checks_a_job_schedule_and_sensor():
    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    assert sorted(key.to_user_string() for key in graph.get_all_asset_keys()) == sorted([*KEYS, "raw_source_files"])
    # The lineage starts at the raw files: ingest depends on them.
    assert [k.to_user_string() for k in graph.get(dg.AssetKey("prepared_dataset")).parent_keys] == ["raw_source_files"]
    assert {c.name for c in graph.asset_check_keys} == {"encoder_not_collapsed", "probe_beats_random_init",
                                                        "onnx_matches_pytorch"}
    for asset in ASSETS:
        assert asset.op.pool == POOL
    assert all(spec.blocking for check in CHECKS for spec in check.check_specs)
    assert defs.resolve_job_def("retrain") is not None
    assert weekly_retrain.cron_schedule == RETRAIN_CRON


INSTANCES = {}  # project root -> the instance its runs are recorded in


def _materialize(root, **kwargs):
    return dg.materialize([*ASSETS, *CHECKS], resources={"dvc": DvcProject(project_dir=str(root))},
                          instance=INSTANCES.get(root) or dg.DagsterInstance.ephemeral(), **kwargs)


def _log_lines(root, run_id: str) -> list[str]:
    return [record.user_message for record in INSTANCES[root].all_logs(run_id) if record.user_message]


def _materializations(result) -> dict:
    return {event.asset_key.to_user_string(): event.step_materialization_data.materialization
            for event in result.get_asset_materialization_events()}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = make_project(tmp_path_factory.mktemp("dagster") / "project", TINY_DVC)
    INSTANCES[root] = dg.DagsterInstance.ephemeral()
    first = _materialize(root)
    assert first.success
    return root, first


def test_materialize_runs_each_stage_through_dvc_and_reports_through_pipes(project):
    root, first = project
    found = _materializations(first)
    assert sorted(found) == sorted(KEYS)
    dvc_project = DvcProject(project_dir=str(root))
    for key, materialization in found.items():
        meta = materialization.metadata
        assert meta["dvc stage"].value == "ran" and meta[RECOMPUTED].value is True
        assert meta[COMPUTED_IN].value == first.run_id
        # The summary line came back from the byol process through Dagster Pipes.
        assert meta["summary"].value.startswith(f"{STAGE_OF[key]}:")
        outs = dvc_project.lock_outs(STAGE_OF[key])
        assert outs and all(meta[f"dvc md5 {path}"].value == md5 for path, md5 in outs.items())
        assert materialization.tags["dagster/data_version"] == _version_of(outs)
    dataset = found["prepared_dataset"].metadata
    assert dataset["train images"].value == 256 and dataset["unlabeled images"].value == 0
    # The asset ran the scan first: the listing it checked the folder against, by its DVC hash.
    assert dataset["dvc md5 data/source.parquet"].value == dvc_project.lock_outs("scan")["data/source.parquet"]
    assert dataset["source files"].value == 4
    assert dataset["exact duplicates"].value == 0 and dataset["skipped files"].value == 0
    assert 0.0 <= found["linear_eval"].metadata["linear top-1"].value <= 1.0
    assert found["linear_eval"].metadata["probe vs baselines"].value.records[0].data["features"] == "BYOL encoder"
    assert 1.0 <= found["linear_eval"].metadata["effective rank"].value <= 64  # the tiny encoder's 64 dims
    spread = [row.data["mean cosine"] for row in found["linear_eval"].metadata["probe vs baselines"].value.records]
    assert found["linear_eval"].metadata["mean cosine"].value == spread[0] and all(-1 <= c <= 1 for c in spread)
    assert found["byol_encoder"].metadata["training curves"].value.startswith("![training curves](data:image/png;base64,")
    assert found["onnx_encoder"].metadata["parity ok"].value is True
    embeddings = found["image_embeddings"].metadata
    assert embeddings["images"].value == 256 + 128
    for name in ("nearest neighbours", "embedding map"):  # inline pictures, not links
        assert embeddings[name].value.startswith("![") and "(data:image/png;base64," in embeddings[name].value
    assert found["linear_eval"].metadata["label efficiency curve"].value.startswith("![label efficiency](data:image/png")
    assert found["linear_eval"].metadata["label efficiency"].value.records[0].data["features"] == "BYOL encoder"
    evaluations = {e.asset_check_key.name: e.passed for e in first.get_asset_check_evaluations()}
    assert evaluations == {"encoder_not_collapsed": True, "probe_beats_random_init": True, "onnx_matches_pytorch": True}
    # Progress reached the run's log while the stages ran, through Pipes: every epoch, every probe fit.
    lines = _log_lines(root, first.run_id)
    epochs = load_params(root / "params.yaml").pretrain.epochs
    assert [line.split()[1] for line in lines if line.startswith("epoch ")] == [f"{e}/{epochs}" for e in range(1, epochs + 1)]
    fits = [line for line in lines if line.startswith("evaluate: probe ")]
    fractions = load_params(root / "params.yaml").evaluate.label_fractions
    assert len(fits) == 3 * (1 + len(fractions)) and fits[-1].startswith(f"evaluate: probe {len(fits)}/{len(fits)},")
    assert not [line for line in lines if "did not receive" in line]


def _version_of(outs: dict) -> str:
    return StageRun("x", True, 0.0, outs).data_version.value


def test_a_second_materialization_is_skipped_by_dvc_and_keeps_the_versions(project):
    root, first = project
    again = _materialize(root)
    assert again.success
    before, after = _materializations(first), _materializations(again)
    for key in KEYS:
        assert after[key].metadata["dvc stage"].value == SKIPPED and SKIPPED.startswith("skipped by DVC")
        assert "summary" not in after[key].metadata
        assert after[key].tags["dagster/data_version"] == before[key].tags["dagster/data_version"]
        # The same figures as the run that made the outputs, read back from them, marked as not
        # recomputed, with that run named.
        assert before[key].metadata[RECOMPUTED].value is True and after[key].metadata[RECOMPUTED].value is False
        assert after[key].metadata[COMPUTED_IN].value == first.run_id
        figures = {name for name, value in before[key].metadata.items()
                   if not name.startswith("dvc ") and name not in (RECOMPUTED, COMPUTED_IN, "summary")}
        assert figures and figures == {name for name in after[key].metadata
                                       if not name.startswith("dvc ") and name not in (RECOMPUTED, COMPUTED_IN)}
        for name in figures:
            if isinstance(before[key].metadata[name].value, (int, float, str)):
                assert after[key].metadata[name].value == before[key].metadata[name].value, (key, name)
    assert after["linear_eval"].metadata["linear top-1"].value == before["linear_eval"].metadata["linear top-1"].value
    lines = _log_lines(root, again.run_id)
    assert sorted(line.split(":")[0] for line in lines if "skipped by DVC" in line) == sorted(STAGE_OF.values())
    assert sorted(line.split(":")[0] for line in lines if "not recomputed" in line) == sorted(STAGE_OF.values())
    # The one stage that runs, with the one Pipes session: the scan, which lists the source
    # folder for DVC (ingest is then skipped).
    assert [line.split(" in ")[0] for line in lines if "running `repro" in line] == ["running `repro --single-item scan`"]
    assert [line for line in lines if "[pipes]" in line] == ["[pipes] external process successfully opened dagster pipes."]


def test_outputs_made_outside_dagster_show_their_figures_on_the_first_materialization(project):
    """`make run` (dvc repro) first, then the UI: the first materialization, which DVC skips,
    shows the figures `make run` computed, and says they were made outside Dagster."""
    root, _ = project
    result = dg.materialize([linear_eval], resources={"dvc": DvcProject(project_dir=str(root))},
                            instance=dg.DagsterInstance.ephemeral())  # a new UI: no history
    meta = _materializations(result)["linear_eval"].metadata
    metrics = json.loads(load_params(root / "params.yaml").paths.eval_metrics.read_text())
    assert meta["dvc stage"].value == SKIPPED and meta[RECOMPUTED].value is False
    assert meta[COMPUTED_IN].value == OUTSIDE
    assert meta["linear top-1"].value == round(metrics["linear_top1"], 4)
    assert meta["label efficiency curve"].value.startswith("![label efficiency](data:image/png")


def test_collapse_check_fails_on_a_planted_collapsed_encoder(project, tmp_path):
    root, _ = project
    params = load_params(root / "params.yaml")
    encoder, spec, info = load_encoder(params.paths.encoder)
    original = params.paths.encoder.read_bytes()
    with torch.no_grad():
        encoder.layer4[-1].bn2.weight.zero_()  # the last block now adds a constant
        for block in encoder.layer4:
            for module in block.modules():
                if isinstance(module, torch.nn.Conv2d):
                    module.weight.zero_()
    try:
        save_encoder(params.paths.encoder, encoder, spec, info)
        result = encoder_not_collapsed(dg.build_asset_check_context(), dvc=DvcProject(project_dir=str(root)))
    finally:
        params.paths.encoder.write_bytes(original)
    assert not result.passed
    assert result.metadata["feature spread"].value < 0.05
    assert "collapsed encoder: feature spread" in result.description
    healthy = encoder_not_collapsed(dg.build_asset_check_context(), dvc=DvcProject(project_dir=str(root)))
    assert healthy.passed and healthy.metadata["feature spread"].value > 0.05


def test_parity_check_fails_on_a_planted_onnx_error(project):
    root, _ = project
    path = load_params(root / "params.yaml").paths.onnx
    original = path.read_bytes()
    model = onnx.load(str(path))
    target = max(model.graph.initializer, key=lambda t: np.prod(t.dims))
    array = numpy_helper.to_array(target).copy()
    target.CopyFrom(numpy_helper.from_array(array + np.float32(0.5), target.name))
    try:
        onnx.save(model, str(path))
        result = onnx_matches_pytorch(dg.build_asset_check_context(), dvc=DvcProject(project_dir=str(root)))
    finally:
        path.write_bytes(original)
    assert not result.passed
    assert result.metadata["max abs diff"].value > 1e-3
    assert "ONNX and PyTorch disagree: max abs diff" in result.description
    assert onnx_matches_pytorch(dg.build_asset_check_context(), dvc=DvcProject(project_dir=str(root))).passed


def test_probe_check_fails_when_the_probe_does_not_beat_random_init(project):
    root, _ = project
    path = load_params(root / "params.yaml").paths.eval_metrics
    original = path.read_text()
    metrics = json.loads(original)
    metrics["linear_top1"] = metrics["random_init_linear_top1"] + 0.005
    params_text = (root / "params.yaml").read_text()
    try:
        edit_params(root, "checks.min_probe_margin", 0.02)  # read by no DVC stage
        path.write_text(json.dumps(metrics))
        result = probe_beats_random_init(dg.build_asset_check_context(), dvc=DvcProject(project_dir=str(root)))
    finally:
        path.write_text(original)
        (root / "params.yaml").write_text(params_text)
    assert not result.passed
    assert result.metadata["margin"].value == pytest.approx(0.005)
    assert "+0.0050, less than the 0.02 required" in result.description


def test_a_failed_stage_fails_its_asset_with_the_stage_message_and_is_not_retried(tmp_path):
    root = make_project(tmp_path / "project", TINY_DVC)
    rename_param(root, "pretrain.epochs", "epohcs")  # every stage validates the whole file first
    result = _materialize(root, raise_on_error=False)
    assert not result.success
    failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert [e.step_key for e in failures] == ["prepared_dataset"]
    message = failures[0].step_failure_data.user_failure_data.description
    assert "pretrain.epohcs: unknown key (did you mean 'pretrain.epochs'?)" in message
    assert not [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert _materializations(result) == {}  # and nothing after it ran


def _dvc_status(root) -> dict:
    """`dvc status`, less the scan stage: it always runs (always_changed), so DVC always names it."""
    result = subprocess.run([DvcProject(project_dir=str(root)).dvc, "status", "--json"], cwd=root,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    status = json.loads(result.stdout)
    assert status.pop("scan", ["always changed"]) == ["always changed"], status
    return status


def test_a_failed_stage_puts_its_last_good_outputs_back(project):
    """DVC deletes a stage's outputs before running it; when the stage then fails, the asset
    checks them out again, so what the asset last showed is still there and true."""
    root, _ = project
    dvc_project = DvcProject(project_dir=str(root))
    metrics = load_params(root / "params.yaml").paths.eval_metrics
    before = dvc_project.lock_outs("evaluate")
    params_text = (root / "params.yaml").read_text()
    try:
        edit_params(root, "evaluate.max_iter", "many")  # read only by evaluate, refused when it starts
        instance = dg.DagsterInstance.ephemeral()
        result = dg.materialize([linear_eval], raise_on_error=False, instance=instance,
                                resources={"dvc": dvc_project})
        assert not result.success
        assert hashlib.md5(metrics.read_bytes()).hexdigest() == before["metrics/eval.json"]
        # Only the param is out of date: no output of evaluate is missing or changed.
        assert list(_dvc_status(root)) == ["evaluate"]
        assert [list(entry) for entry in _dvc_status(root)["evaluate"]] == [["changed deps"]]
        messages = [r.user_message for r in instance.all_logs(result.run_id) if r.user_message]
        assert "evaluate: its last good outputs are back in place (`dvc checkout evaluate`)" in messages
    finally:
        (root / "params.yaml").write_text(params_text)


# A pretrain step in a process of its own, so that it can be interrupted as a cancel does;
# it prints its run's log lines (not Dagster's own events), one JSON [level, message] a line.
PRETRAIN_STEP = """
import json, logging, sys
import dagster as dg
from pipelines.assets import byol_encoder
from pipelines.resources import DvcProject
instance = dg.DagsterInstance.ephemeral()
result = dg.materialize([byol_encoder], raise_on_error=False, instance=instance,
                        resources={"dvc": DvcProject(project_dir=sys.argv[1])})
for record in instance.all_logs(result.run_id):
    if record.dagster_event is None:
        print(json.dumps([logging.getLevelName(record.level), record.user_message or ""]))
"""


def test_a_cancelled_pretrain_leaves_its_last_outputs_in_place_and_the_next_run_resumes(project, tmp_path):
    root = tmp_path / "project"
    shutil.copytree(project[0], root, symlinks=True)  # its DVC cache and lock too
    dvc_project = DvcProject(project_dir=str(root))
    before = dvc_project.lock_outs("pretrain")
    edit_params(root, "pretrain.epochs", 20)  # pretrain must rerun, and takes long enough to be caught
    params = load_params(root / "params.yaml")
    step = subprocess.Popen([sys.executable, "-c", PRETRAIN_STEP, str(root)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + 300
    while not params.paths.resume_state.is_file():  # an epoch is done and checkpointed
        assert step.poll() is None and time.monotonic() < deadline, "pretrain ended or never checkpointed"
        time.sleep(0.1)
    step.send_signal(signal.SIGINT)  # what a cancel in the UI does to the step
    out, _ = step.communicate(timeout=180)
    log = [json.loads(line) for line in out.splitlines() if line.startswith("[")]
    # One warning, and it says what was stopped and that the last good outputs are back.
    warnings = [message for level, message in log if level in ("WARNING", "ERROR")]
    assert len(warnings) == 1 and warnings[0].startswith("interrupted: stopped `dvc repro pretrain`"), warnings
    assert "its last good outputs are back in place" in warnings[0]
    for path in ("models/encoder.pt", "models/checkpoint.pt", "metrics/pretrain.json"):
        assert hashlib.md5((root / path).read_bytes()).hexdigest() == before[path], path
    assert params.paths.resume_state.is_file()  # kept for the next run, outside DVC's outputs
    status = _dvc_status(root)  # only the changed param: nothing deleted, downstream untouched
    assert list(status) == ["pretrain"] and [list(entry) for entry in status["pretrain"]] == [["changed deps"]]
    # The next run reruns pretrain, which resumes from its checkpoint.
    instance = dg.DagsterInstance.ephemeral()
    again = dg.materialize([byol_encoder], instance=instance, resources={"dvc": dvc_project})
    messages = [r.user_message for r in instance.all_logs(again.run_id) if r.user_message]
    assert [m for m in messages if m.startswith("pretrain: resuming from")], messages
    assert json.loads((root / "metrics/pretrain.json").read_text())["epochs"] == 20


def test_outputs_dvc_restores_from_its_run_cache_are_not_called_a_run_nor_a_skip(tmp_path):
    """Inputs that were run before: DVC checks out that run's outputs and byol never starts,
    so Dagster hears nothing through Pipes, and that is no cause for a warning."""
    dvc = tmp_path / "dvc"
    dvc.write_text("#!/bin/sh\n[ \"$1\" = status ] && exit 1\n"
                   "echo \"Stage 'ingest' is cached - skipping run, checking out outputs\"\n")
    dvc.chmod(0o755)

    @dg.asset
    def stage(context: dg.AssetExecutionContext, dvc: DvcProject) -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata=dvc.repro(context, "ingest").metadata())

    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([stage], instance=instance,
                            resources={"dvc": DvcProject(project_dir=str(tmp_path), dvc=str(dvc))})
    assert _materializations(result)["stage"].metadata["dvc stage"].value == RESTORED
    messages = [r.user_message for r in instance.all_logs(result.run_id) if r.user_message]
    assert "ingest: restored (these inputs were run before: DVC checked out that run's outputs)" in " ".join(messages)
    assert not [m for m in messages if "[pipes]" in m]


def test_transient_dvc_failures_are_retryable_and_stage_errors_are_not():
    lock = DvcProject._failure("ingest", 1, ["ERROR: Unable to acquire lock. Most likely another DVC process is running"])
    killed = DvcProject._failure("pretrain", 255, ["ERROR: failed to reproduce 'pretrain': failed to run: byol pretrain, exited with -9"])
    stage = DvcProject._failure("pretrain", 1, ["Running stage 'pretrain':", "byol pretrain: error: bad data",
                                                "ERROR: failed to reproduce 'pretrain': failed to run: byol pretrain, exited with 1"])
    assert lock.allow_retries and killed.allow_retries
    assert not stage.allow_retries and stage.description.endswith("(exit 1): byol pretrain: error: bad data")


def test_a_transient_failure_is_retried_twice_then_fails(tmp_path, monkeypatch):
    import pipelines.assets

    monkeypatch.setattr(pipelines.assets, "RETRY_DELAY", 0)
    dvc = tmp_path / "dvc"  # a dvc that always finds the repository locked
    dvc.write_text("#!/bin/sh\necho 'ERROR: Unable to acquire lock. Most likely another DVC process is running'\nexit 1\n")
    dvc.chmod(0o755)
    result = dg.materialize([ASSETS[0]], raise_on_error=False, instance=dg.DagsterInstance.ephemeral(),
                            resources={"dvc": DvcProject(project_dir=str(tmp_path), dvc=str(dvc))})
    kinds = [e.event_type_value for e in result.all_events if e.event_type_value.startswith("STEP_")]
    assert kinds.count("STEP_UP_FOR_RETRY") == 2 and kinds[-1] == "STEP_FAILURE"


def test_files_observed_before_automation_first_looks_still_start_the_chain():
    """The observation sensor may store its first observation before the automation sensor's
    first evaluation, which then sees no change: ingest must still run, and the rest follow."""
    instance = dg.DagsterInstance.ephemeral()

    def requested(cursor):
        found = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
        return {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()
                if found.get_num_requested(k)}, found.cursor

    instance.report_runless_asset_event(observation(ROOT / SOURCE, "0123456789abcdef"))
    first, cursor = requested(None)
    assert first == {"prepared_dataset"}
    instance.report_runless_asset_event(dg.AssetMaterialization("prepared_dataset"))
    rest, cursor = requested(cursor)
    assert rest == set(KEYS) - {"prepared_dataset"}
    again, _ = requested(cursor)
    assert again == set()  # asked for once


def test_the_schedule_ticks_a_retrain_run():
    context = dg.build_schedule_context(scheduled_execution_time=datetime(2026, 11, 30, 3, tzinfo=timezone.utc))
    requests = weekly_retrain.evaluate_tick(context).run_requests
    assert len(requests) == 1 and requests[0].job_name in (None, "retrain")
    assert weekly_retrain.job_name == "retrain"


def test_new_files_are_observed_and_ask_for_exactly_one_run_of_the_chain(tmp_path):
    root = make_project(tmp_path / "project", TINY_DVC)
    resource = DvcProject(project_dir=str(root))
    instance = dg.DagsterInstance.ephemeral()
    chain = {*KEYS, "encoder_not_collapsed", "probe_beats_random_init", "onnx_matches_pytorch"}

    def tick(cursor):
        context = dg.build_sensor_context(cursor=cursor, resources={"dvc": resource}, instance=instance)
        result = observe_source_data(context)
        if isinstance(result, dg.SensorResult):
            for event in result.asset_events:
                instance.report_runless_asset_event(event)
        return result, context.cursor

    def requested(cursor):
        found = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
        keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys() if found.get_num_requested(k)}
        checks = {r.key.name for r in found.results if isinstance(r.key, dg.AssetCheckKey) and r.true_subset.size}
        return keys | checks, found.cursor

    nothing, cursor = requested(None)
    assert nothing == set()  # nothing observed yet: nothing to do
    first, sensor_cursor = tick(None)
    cache = load_params(root / "params.yaml").paths.cache
    assert isinstance(first, dg.SensorResult) and sensor_cursor == source_fingerprint(root / SOURCE, cache)
    assert first.asset_events[0].tags["dagster/data_version"] == sensor_cursor
    everything, cursor = requested(cursor)
    assert everything == chain  # the five stages and their three checks, in one tick
    same, same_cursor = tick(sensor_cursor)
    assert isinstance(same, dg.SkipReason) and same_cursor == sensor_cursor
    again, cursor = requested(cursor)
    assert again == set()  # asked once, not again
    make_fashion_files(root / SOURCE, n_train=330, n_test=160, seed=3)  # new data arrives
    fired, new_cursor = tick(sensor_cursor)
    assert isinstance(fired, dg.SensorResult) and new_cursor != sensor_cursor
    assert requested(cursor)[0] == chain
    # Observing the asset by hand (the UI's "Observe") gives the same version.
    observed = observe_folder(root / SOURCE, cache)
    assert observed.data_version.value == new_cursor and observed.metadata["files"].value == 4


def test_the_code_location_imports_neither_torch_nor_onnxruntime():
    """The checks measure through `byol check` in a process of their own, as the stages run:
    Dagster's processes (code server, run workers) never load the training stack."""
    done = subprocess.run([sys.executable, "-c", "import sys, pipelines.definitions, pipelines.checks; "
                           "print(sorted(m for m in ('torch', 'onnxruntime') if m in sys.modules))"],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_dg_check_defs_loads_the_project_from_its_root():
    dg_command = Path(sys.executable).parent / "dg"
    result = subprocess.run([str(dg_command), "check", "defs"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "All definitions loaded successfully" in result.stdout + result.stderr


def test_a_missing_dvc_command_fails_with_what_to_do(project):
    root, _ = project
    result = dg.materialize([ASSETS[0]], raise_on_error=False, instance=dg.DagsterInstance.ephemeral(),
                            resources={"dvc": DvcProject(project_dir=str(root), dvc=str(root / "no-such-dvc"))})
    failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert len(failures) == 1
    assert "was not found: run `make setup`" in failures[0].step_failure_data.user_failure_data.description


def test_a_started_run_whose_worker_is_gone_is_marked_failed_and_a_live_one_is_not():
    from dagster._core.events import EngineEventData

    from pipelines.monitor import fail_dead_runs

    @dg.asset
    def something():
        return 1

    instance = dg.DagsterInstance.ephemeral()
    dead = dg.materialize([something], instance=instance)
    alive = dg.materialize([something], instance=instance)
    # Both now look started, as if their workers were still at work: one worker is this
    # process (alive), the other a pid that is gone.
    gone = subprocess.Popen(["true"])
    gone.wait()
    for result, pid in ((dead, gone.pid), (alive, os.getpid())):
        instance.run_storage.handle_run_event(result.run_id, dg.DagsterEvent(
            event_type_value="PIPELINE_START", job_name=result.dagster_run.job_name))
        instance.report_engine_event(f"Executing steps in process (pid: {pid})", instance.get_run_by_id(result.run_id),
                                     EngineEventData(metadata={"pid": dg.MetadataValue.text(str(pid))}))
    assert instance.get_run_by_id(dead.run_id).status == dg.DagsterRunStatus.STARTED
    fail_dead_runs(dg.build_sensor_context(instance=instance))
    assert instance.get_run_by_id(dead.run_id).status == dg.DagsterRunStatus.FAILURE
    assert instance.get_run_by_id(alive.run_id).status == dg.DagsterRunStatus.STARTED
