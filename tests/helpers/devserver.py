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


def working_in(project: Path, program: bytes, argument: bytes | None = None) -> list[int]:
    """Pids of live processes working in ``project`` whose command line names ``program``
    (and ``argument``, if given): what a stage left running there."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
            if any(a.endswith(program) for a in args) and (argument is None or argument in args) and \
                    Path(os.readlink(proc / "cwd")) == project:
                pids.append(int(proc.name))
        except (OSError, ValueError):
            continue
    return pids


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_webserver(url: str, timeout: float, alive=lambda: True) -> bool:
    deadline = time.monotonic() + timeout
    while alive() and time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/server_info", timeout=5).ok:
                return True
        except requests.ConnectionError:
            pass
        time.sleep(1)
    return False


class Webserver:
    """The GraphQL calls the UI makes, against a webserver at ``url``."""

    url = ""

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

    def launch_job(self, job: str) -> str:
        """Launch job ``job`` as the launchpad does, with empty run config; returns the run id."""
        params = {"selector": {"repositoryLocationName": self.location(), "repositoryName": "__repository__",
                               "jobName": job}, "runConfigData": {}, "executionMetadata": {"tags": []}}
        data = self.query("""mutation($p: ExecutionParams!) { launchRun(executionParams: $p) {
            __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }""", p=params)
        if data["launchRun"]["__typename"] != "LaunchRunSuccess":
            raise RuntimeError(f"launch refused: {data['launchRun']}")
        return data["launchRun"]["run"]["runId"]

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

    def terminate(self, run_id: str) -> str:
        """What the UI's "Terminate" button sends; returns the mutation's result type."""
        data = self.query("""mutation($id: String!) { terminateRun(runId: $id) { __typename
            ... on PythonError { message } } }""", id=run_id)
        return data["terminateRun"]["__typename"]

    def messages(self, run_id: str) -> list[str]:
        """The run's event log messages, oldest first."""
        data = self.query("""query($id: ID!) { logsForRun(runId: $id, limit: 100000) {
            ... on EventConnection { events { ... on MessageEvent { message } } } } }""", id=run_id)
        return [e.get("message") or "" for e in data["logsForRun"]["events"]]

    def event_types(self, run_id: str) -> list[str]:
        data = self.query("""query($id: ID!) { logsForRun(runId: $id, limit: 100000) {
            ... on EventConnection { events { __typename } } } }""", id=run_id)
        return [e["__typename"] for e in data["logsForRun"]["events"]]

    def sensor_selector(self, name: str) -> dict:
        return {"repositoryLocationName": self.location(), "repositoryName": "__repository__", "sensorName": name}

    def start_sensor(self, name: str) -> str:
        data = self.query("""mutation($s: SensorSelector!) { startSensor(sensorSelector: $s) { __typename
            ... on Sensor { sensorState { status } } ... on PythonError { message } } }""", s=self.sensor_selector(name))
        return data["startSensor"].get("sensorState", {}).get("status") or str(data["startSensor"])

    def stop_sensor(self, name: str) -> str:
        """Back to the status in code (STOPPED for ours but the observation); returns it."""
        data = self.query("""mutation($s: SensorSelector!) { resetSensor(sensorSelector: $s) { __typename
            ... on Sensor { sensorState { status } } ... on PythonError { message } } }""", s=self.sensor_selector(name))
        return data["resetSensor"].get("sensorState", {}).get("status") or str(data["resetSensor"])

    def sensor_state(self, name: str) -> dict:
        """``{"status": ..., "cursor": ...}`` of a sensor."""
        data = self.query("""query($s: SensorSelector!) { sensorOrError(sensorSelector: $s) { ... on Sensor {
            sensorState { status typeSpecificData { ... on SensorData { lastCursor } } } } } }""",
                          s=self.sensor_selector(name))
        state = data["sensorOrError"]["sensorState"]
        return {"status": state["status"], "cursor": (state.get("typeSpecificData") or {}).get("lastCursor")}

    def runs(self) -> list[dict]:
        """Every run, newest first: id, status and tags."""
        data = self.query("""{ runsOrError(limit: 200) { ... on Runs { results { runId status
            tags { key value } } } } }""")
        return [{"runId": r["runId"], "status": r["status"], "tags": {t["key"]: t["value"] for t in r["tags"]}}
                for r in data["runsOrError"]["results"]]

    def instance_info(self) -> str:
        return self.query("{ instance { info } }")["instance"]["info"] or ""

    def has_materialization(self, key: str) -> bool:
        data = self.query("""query($path: [String!]!) { assetOrError(assetKey: {path: $path}) { __typename
            ... on Asset { assetMaterializations(limit: 1) { runId } } } }""", path=[key])
        found = data["assetOrError"]
        return found["__typename"] == "Asset" and bool(found["assetMaterializations"])

    def latest_materialization(self, key: str) -> dict:
        """The newest materialization of asset ``key``: its run id and metadata by label."""
        data = self.query("""query($path: [String!]!) { assetOrError(assetKey: {path: $path}) { ... on Asset {
            assetMaterializations(limit: 1) { runId metadataEntries { label __typename
              ... on FloatMetadataEntry { floatValue } ... on IntMetadataEntry { intValue }
              ... on TextMetadataEntry { text } ... on MarkdownMetadataEntry { mdStr } } } } } }""", path=[key])
        found = data["assetOrError"]["assetMaterializations"][0]
        return {"runId": found["runId"], "metadata": {e["label"]: e for e in found["metadataEntries"]}}


class DagsterDev(Webserver):
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
        if not wait_for_webserver(self.url, self.start_timeout, lambda: self._process.poll() is None):
            self.__exit__(None, None, None)
            raise RuntimeError(f"dagster dev did not come up:\n{self.log_tail()}")
        return self

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
