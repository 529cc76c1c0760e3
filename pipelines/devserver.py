"""Drive a local Dagster webserver the way the UI does, for tests, benchmarks and
screenshots: start `dagster dev` in its own process group on a free port, launch runs
through its GraphQL API, read results back, and stop the whole group."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

DONE = {"SUCCESS", "FAILURE", "CANCELED"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class DagsterDev:
    """``with DagsterDev(project) as ui:`` runs `dagster dev` over ``project`` (its
    dagster.yaml applies: DAGSTER_HOME is unset for the child) and stops every process
    it started when the block ends; `dagster dev`'s children outlive a plain SIGTERM."""

    def __init__(self, project: Path, log: Path, start_timeout: float = 180):
        self.project, self.log_path, self.start_timeout = Path(project), Path(log), start_timeout
        self.url = ""
        self._process: subprocess.Popen | None = None

    def __enter__(self) -> "DagsterDev":
        port = free_port()
        env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
        env["BYOL_PROJECT_DIR"] = str(self.project)
        dagster = Path(sys.executable).parent / "dagster"
        self._log = self.log_path.open("w")
        self._process = subprocess.Popen(
            [str(dagster), "dev", "-m", "pipelines.definitions", "-h", "127.0.0.1", "-p", str(port)],
            cwd=self.project, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + self.start_timeout
        while True:
            try:
                if requests.get(f"{self.url}/server_info", timeout=5).ok:
                    return self
            except requests.ConnectionError:
                pass
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise RuntimeError(f"dagster dev did not come up:\n{self.log_tail()}")
            time.sleep(1)

    def __exit__(self, *exc) -> None:
        if self._process is not None:
            try:
                os.killpg(self._process.pid, signal.SIGTERM)
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self._process.pid, signal.SIGKILL)
                self._process.wait()
            except ProcessLookupError:
                pass
            self._process = None
            self._log.close()

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text()[-chars:] if self.log_path.is_file() else ""

    def query(self, text: str, **variables) -> dict:
        response = requests.post(f"{self.url}/graphql", json={"query": text, "variables": variables}, timeout=60)
        response.raise_for_status()
        body = response.json()
        if "errors" in body:
            raise RuntimeError(f"GraphQL errors: {body['errors']}")
        return body["data"]

    def location(self) -> str:
        data = self.query("{ repositoriesOrError { ... on RepositoryConnection { nodes { location { name } } } } }")
        return data["repositoriesOrError"]["nodes"][0]["location"]["name"]

    def materialize_all(self, assets: list[str], checks: dict[str, str]) -> str:
        """What the UI's "Materialize all" sends: the implicit asset job with every asset
        (``assets``) and asset check (``checks``: asset -> check name). Returns the run id."""
        params = {
            "selector": {"repositoryLocationName": self.location(), "repositoryName": "__repository__",
                         "jobName": "__ASSET_JOB", "assetSelection": [{"path": [key]} for key in assets],
                         "assetCheckSelection": [{"assetKey": {"path": [a]}, "name": c} for a, c in checks.items()]},
            "runConfigData": {}, "executionMetadata": {"tags": []},
        }
        data = self.query("""mutation($p: ExecutionParams!) { launchRun(executionParams: $p) {
            __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message }
            ... on InvalidSubsetError { message } ... on RunConfigValidationInvalid { errors { message } } } }""",
                          p=params)
        launched = data["launchRun"]
        if launched["__typename"] != "LaunchRunSuccess":
            raise RuntimeError(f"launch refused: {launched}")
        return launched["run"]["runId"]

    def run(self, run_id: str) -> dict:
        return self.query("query($id: ID!) { runOrError(runId: $id) { ... on Run { status startTime endTime } } }",
                          id=run_id)["runOrError"]

    def wait(self, run_ids: list[str], timeout: float) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while True:
            statuses = {run_id: self.run(run_id)["status"] for run_id in run_ids}
            if all(s in DONE for s in statuses.values()) or time.monotonic() > deadline:
                return statuses
            time.sleep(2)

    def event_types(self, run_id: str) -> list[str]:
        data = self.query("""query($id: ID!) { logsForRun(runId: $id, limit: 100000) {
            ... on EventConnection { events { __typename } } } }""", id=run_id)
        return [e["__typename"] for e in data["logsForRun"]["events"]]

    def latest_materialization(self, key: str) -> dict:
        """The newest materialization of asset ``key``: its run id and metadata by label."""
        data = self.query("""query($path: [String!]!) { assetOrError(assetKey: {path: $path}) { ... on Asset {
            assetMaterializations(limit: 1) { runId metadataEntries { label __typename
              ... on FloatMetadataEntry { floatValue } ... on IntMetadataEntry { intValue }
              ... on TextMetadataEntry { text } } } } } }""", path=[key])
        found = data["assetOrError"]["assetMaterializations"][0]
        return {"runId": found["runId"], "metadata": {e["label"]: e for e in found["metadataEntries"]}}
