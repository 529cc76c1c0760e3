"""Servers of a test's own, on 127.0.0.1 and free ports, each stopped by the test that started
it: a PostgreSQL cluster in a scratch folder and a Redis server without persistence."""

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.devserver import free_port

REDIS = Path("/usr/bin/redis-server")


def _pg_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not found:
        pytest.fail("PostgreSQL is missing: run `make setup` (it installs Debian's postgresql)")
    return found[-1].parent


def _as_pg(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as root, the cluster belongs to the postgres user."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@contextlib.contextmanager
def postgres() -> Iterator[dict[str, str]]:
    """A private cluster with a database `dagster`; yields the DAGSTER_PG_* variables that
    scripts/serve-dagster.yaml reads."""
    bin_dir, port = _pg_bin(), free_port()
    data = Path(tempfile.mkdtemp(prefix="byol-pg-"))  # in /tmp, which the postgres user can reach
    if os.geteuid() == 0:
        shutil.chown(data, "postgres")
    try:
        subprocess.run(_as_pg([str(bin_dir / "initdb"), "-D", str(data / "db"), "-U", "dagster", "--auth=trust",
                               "-E", "UTF8"]), check=True, capture_output=True, timeout=120)
        subprocess.run(_as_pg([str(bin_dir / "pg_ctl"), "-D", str(data / "db"), "-w", "-t", "60", "-l",
                               str(data / "server.log"), "-o", f"-c listen_addresses=127.0.0.1 -p {port} -k {data}",
                               "start"]), check=True, capture_output=True, timeout=90)
        try:
            subprocess.run(_as_pg([str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "dagster",
                                   "dagster"]), check=True, capture_output=True, timeout=60)
            yield {"DAGSTER_PG_HOST": "127.0.0.1", "DAGSTER_PG_PORT": str(port), "DAGSTER_PG_USERNAME": "dagster",
                   "DAGSTER_PG_PASSWORD": "", "DAGSTER_PG_DB": "dagster"}
        finally:
            subprocess.run(_as_pg([str(bin_dir / "pg_ctl"), "-D", str(data / "db"), "-w", "-m", "immediate", "stop"]),
                           capture_output=True, timeout=60)
    finally:
        shutil.rmtree(data, ignore_errors=True)


@contextlib.contextmanager
def redis(folder: Path) -> Iterator[str]:
    """A Redis server on 127.0.0.1 (no password: loopback only, as `make serve`'s); yields its URL."""
    if not REDIS.is_file():
        pytest.fail(f"{REDIS} is missing: run `make setup` (it installs Debian's redis-server)")
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    server = subprocess.Popen([str(REDIS), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no", "--dir", str(folder)],
                              stdout=(folder / "redis.log").open("w"), stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True, text=True).stdout.strip() \
                != "PONG":
            assert server.poll() is None and time.monotonic() < deadline, (folder / "redis.log").read_text()
            time.sleep(0.2)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop_group(server)


def stop_group(process: subprocess.Popen, grace: float = 20) -> None:
    """Stop ``process`` and its process group (it was started in a session of its own)."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # what outlived SIGTERM in its group
    process.wait(timeout=30)
