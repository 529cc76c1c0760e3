"""The UI end to end: `dagster dev` on a free local port over a scratch copy of the
project; a run launched through the webserver's GraphQL API as the UI's "Materialize all"
does; then ten runs at once, which take turns in the "dvc" pool instead of failing on
DVC's repository lock."""

import pytest

from conftest import TINY_DVC, make_project
from pipelines.checks import CHECKS
from helpers.devserver import DagsterDev

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
