"""The UI end to end: `dagster dev` on a free local port over a scratch copy of the
project; runs launched through the webserver's GraphQL API as the UI's "Materialize all"
does; then ten runs at once, which take turns in the "dvc" pool instead of failing on
DVC's repository lock."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from conftest import TINY_DVC, make_project

KEYS = ["prepared_dataset", "byol_encoder", "linear_eval", "onnx_encoder"]
CHECKS = {"byol_encoder": "encoder_not_collapsed", "linear_eval": "probe_beats_random_init",
          "onnx_encoder": "onnx_matches_pytorch"}
DONE = {"SUCCESS", "FAILURE", "CANCELED"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Ui:
    def __init__(self, url: str):
        self.url = url

    def query(self, text: str, **variables) -> dict:
        response = requests.post(f"{self.url}/graphql", json={"query": text, "variables": variables}, timeout=60)
        response.raise_for_status()
        body = response.json()
        assert "errors" not in body, body["errors"]
        return body["data"]

    def location(self) -> str:
        data = self.query("{ repositoriesOrError { ... on RepositoryConnection { nodes { name location { name } } } } }")
        return data["repositoriesOrError"]["nodes"][0]["location"]["name"]

    def materialize_all(self) -> str:
        """What the UI's "Materialize all" sends: the implicit asset job, every asset and check."""
        params = {
            "selector": {"repositoryLocationName": self.location(), "repositoryName": "__repository__",
                         "jobName": "__ASSET_JOB",
                         "assetSelection": [{"path": [key]} for key in KEYS],
                         "assetCheckSelection": [{"assetKey": {"path": [a]}, "name": c} for a, c in CHECKS.items()]},
            "runConfigData": {}, "executionMetadata": {"tags": []},
        }
        data = self.query("""mutation($p: ExecutionParams!) { launchRun(executionParams: $p) {
            __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message }
            ... on InvalidSubsetError { message } ... on RunConfigValidationInvalid { errors { message } } } }""", p=params)
        launched = data["launchRun"]
        assert launched["__typename"] == "LaunchRunSuccess", launched
        return launched["run"]["runId"]

    def status(self, run_id: str) -> str:
        return self.query("query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }", id=run_id)["runOrError"]["status"]

    def wait(self, run_ids: list[str], timeout: float) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while True:
            statuses = {run_id: self.status(run_id) for run_id in run_ids}
            if all(s in DONE for s in statuses.values()) or time.monotonic() > deadline:
                return statuses
            time.sleep(2)

    def event_types(self, run_id: str) -> list[str]:
        data = self.query("""query($id: ID!) { logsForRun(runId: $id, limit: 100000) {
            ... on EventConnection { events { __typename } } } }""", id=run_id)
        return [e["__typename"] for e in data["logsForRun"]["events"]]

    def latest_materialization(self, key: str) -> dict:
        data = self.query("""query($path: [String!]!) { assetOrError(assetKey: {path: $path}) { ... on Asset {
            assetMaterializations(limit: 1) { runId metadataEntries { label __typename
              ... on FloatMetadataEntry { floatValue } ... on IntMetadataEntry { intValue }
              ... on TextMetadataEntry { text } } } } } }""", path=[key])
        return data["assetOrError"]["assetMaterializations"][0]


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    root = make_project(tmp_path_factory.mktemp("ui") / "project", TINY_DVC)
    port = _free_port()
    log = (root.parent / "dagster-dev.log").open("w")
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}  # dagster.yaml in cwd applies
    env["BYOL_PROJECT_DIR"] = str(root)
    dagster = Path(sys.executable).parent / "dagster"
    process = subprocess.Popen([str(dagster), "dev", "-m", "pipelines.definitions", "-h", "127.0.0.1", "-p", str(port)],
                               cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if requests.get(f"{url}/server_info", timeout=5).ok:
                    break
            except requests.ConnectionError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, \
                f"dagster dev did not come up:\n{(root.parent / 'dagster-dev.log').read_text()[-4000:]}"
            time.sleep(1)
        yield Ui(url), root
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # dagster dev's children outlive a plain SIGTERM
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


def test_materialize_all_through_the_webserver(ui):
    client, root = ui
    run_id = client.materialize_all()
    status = client.wait([run_id], timeout=600)[run_id]
    assert status == "SUCCESS", (root.parent / "dagster-dev.log").read_text()[-4000:]
    for key in KEYS:
        materialization = client.latest_materialization(key)
        assert materialization["runId"] == run_id
        labels = {entry["label"]: entry for entry in materialization["metadataEntries"]}
        assert labels["dvc stage"]["text"] == "ran"
    meta = {e["label"]: e for e in client.latest_materialization("prepared_dataset")["metadataEntries"]}
    assert meta["train images"]["intValue"] == 256
    meta = {e["label"]: e for e in client.latest_materialization("linear_eval")["metadataEntries"]}
    assert 0.0 <= meta["linear top-1"]["floatValue"] <= 1.0
    assert "ExecutionStepFailureEvent" not in client.event_types(run_id)


def test_ten_runs_at_once_take_turns_in_the_dvc_pool(ui):
    client, root = ui
    run_ids = [client.materialize_all() for _ in range(10)]
    statuses = client.wait(run_ids, timeout=900)
    assert list(statuses.values()) == ["SUCCESS"] * 10, (root.parent / "dagster-dev.log").read_text()[-4000:]
    for run_id in run_ids:
        events = client.event_types(run_id)
        assert "ExecutionStepFailureEvent" not in events and "ExecutionStepUpForRetryEvent" not in events
