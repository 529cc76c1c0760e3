"""Servers of a test's own, on 127.0.0.1 and free ports, each stopped by the test that started
it: a PostgreSQL cluster in a scratch folder, a Redis server without persistence, and an sshd
for a DVC remote over SSH."""

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
SSHD = Path("/usr/sbin/sshd")


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


@contextlib.contextmanager
def sshd(base: Path) -> Iterator[tuple[str, Path, Path]]:
    """An sshd on 127.0.0.1 that accepts one key made here, for a DVC remote over SSH; yields
    (the remote's URL, the key file, the store folder the URL names)."""
    if not SSHD.is_file():
        pytest.fail(f"{SSHD} is missing: run `make setup` (it installs Debian's openssh-server)")
    for name in ("host", "user"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(base / name)], check=True)
    shutil.copy(base / "user.pub", base / "authorized_keys")
    (base / "authorized_keys").chmod(0o600)
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation folder
    port = free_port()
    (base / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {base / 'host'}\nAuthorizedKeysFile {base / 'authorized_keys'}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
        f"PidFile {base / 'sshd.pid'}\nPermitRootLogin prohibit-password\nSubsystem sftp internal-sftp\n")
    server = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(base / "sshd_config")],
                              stderr=(base / "sshd.log").open("w"))
    try:
        deadline = time.monotonic() + 20
        while subprocess.run(["ssh", "-q", "-i", str(base / "user"), "-p", str(port), "-o", "BatchMode=yes",
                              "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                              f"{os.environ.get('USER') or 'root'}@127.0.0.1", "true"]).returncode != 0:
            assert time.monotonic() < deadline and server.poll() is None, (base / "sshd.log").read_text()
            time.sleep(0.3)
        (base / "store").mkdir()
        user = subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
        yield f"ssh://{user}@127.0.0.1:{port}{base / 'store'}", base / "user", base / "store"
    finally:
        server.terminate()
        server.wait(timeout=10)


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
