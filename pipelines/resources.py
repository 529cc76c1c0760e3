"""The project on disk and the one way Dagster touches it: `dvc repro` of a stage.

Dagster never runs training code itself. Each asset asks :class:`DvcProject` to run
``dvc repro --single-item <stage>`` inside a Dagster Pipes session; the ``byol`` command
that DVC starts finds the Pipes variables in its environment and sends its summary and
metrics back. DVC decides whether the stage needs to run at all, and ``dvc.lock`` records
the hashes of what the stage wrote.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import yaml
from pydantic import Field

from byol_core.config import Params, load_params
from byol_core.errors import ByolError

REPO_ROOT = Path(__file__).resolve().parents[1]
# Failures that another attempt can fix: DVC's repo lock held by a process outside
# Dagster's pool, or the stage killed from outside (pretrain then resumes from its
# checkpoint). Anything else, such as bad params or bad data, fails for good.
_TRANSIENT = ("Unable to acquire lock", "is busy", "exited with -9", "exited with -15",
              "exited with 137", "exited with 143")
TETHER = Path(__file__).with_name("tether.py")
STATUS_TIMEOUT = 600  # seconds for `dvc status` (it hashes a changed source folder)
STOP_GRACE = 20  # seconds a stopped stage has to clean up after SIGINT, before SIGKILL
SKIPPED = ("skipped by DVC: its inputs did not change; the figures are read from its current outputs "
           "(not recomputed), those of the run that made them")


@contextmanager
def _interrupts_held():
    """SIGINT and SIGTERM are ignored inside the block (on the main thread, where Python
    handles signals); the handlers come back after it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, signal.SIG_IGN) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            if handler is not None:
                signal.signal(signum, handler)


def default_dvc() -> str:
    """The dvc that set-up links beside this Python (.venv/bin/dvc), else the one on PATH."""
    beside = Path(sys.executable).parent / "dvc"
    return str(beside) if beside.is_file() else "dvc"


@dataclass
class StageRun:
    """What one `dvc repro --single-item` did."""

    stage: str
    ran: bool  # False: DVC found its inputs unchanged and skipped it
    seconds: float
    outs: dict[str, str]  # dvc.lock: output path -> md5
    reported: dict = field(default_factory=dict)  # what the byol command sent through Pipes

    @property
    def data_version(self) -> dg.DataVersion:
        """One version for the stage's outputs: a hash of their DVC hashes."""
        blob = json.dumps(sorted(self.outs.items())).encode()
        return dg.DataVersion(hashlib.sha256(blob).hexdigest()[:16])

    def metadata(self) -> dict:
        status = "ran" if self.ran else SKIPPED
        meta = {"dvc stage": dg.MetadataValue.text(status)}
        if self.ran:
            meta["dvc seconds"] = dg.MetadataValue.float(round(self.seconds, 2))
        for path, md5 in self.outs.items():
            meta[f"dvc md5 {path}"] = dg.MetadataValue.text(md5)
        if self.reported.get("summary"):
            meta["summary"] = dg.MetadataValue.text(self.reported["summary"])
        return meta


class DvcProject(dg.ConfigurableResource):
    """A checkout of this project (dvc.yaml, params.yaml, .dvc/) and its dvc command."""

    project_dir: str = Field(default=str(REPO_ROOT), description="The project folder: where dvc.yaml lies.")
    dvc: str = Field(default_factory=default_dvc, description="The dvc command (its own environment).")

    @property
    def root(self) -> Path:
        return Path(self.project_dir)

    def params(self) -> Params:
        """params.yaml, validated: the single source of every hyperparameter and path."""
        try:
            return load_params(self.root / "params.yaml")
        except ByolError as exc:
            raise dg.Failure(description=str(exc), allow_retries=False) from None

    def lock_outs(self, stage: str) -> dict[str, str]:
        lock_path = self.root / "dvc.lock"
        if not lock_path.is_file():
            return {}
        lock = yaml.safe_load(lock_path.read_text()) or {}
        entry = lock.get("stages", {}).get(stage, {})
        return {out["path"]: out["md5"] for out in entry.get("outs", [])}

    def changes(self, stage: str) -> list[str] | None:
        """Why DVC would rerun ``stage`` (``dvc status``): [] when it is up to date, None when
        DVC cannot tell (``dvc repro`` then runs and reports the problem)."""
        try:
            result = subprocess.run([self.dvc, "status", "--json", stage], cwd=self.root, capture_output=True,
                                    text=True, timeout=STATUS_TIMEOUT)
            report = json.loads(result.stdout) if result.returncode == 0 else None
        except (OSError, subprocess.TimeoutExpired, ValueError):
            return None
        if not isinstance(report, dict):
            return None
        reasons = []
        for entry in report.get(stage, []):
            if isinstance(entry, dict):
                reasons += [f"{kind} {path} ({state})" for kind, changed in entry.items() if isinstance(changed, dict)
                            for path, state in changed.items()]
            else:
                reasons.append(str(entry))
        return reasons or ([f"dvc status: {report}"] if report else [])

    def repro(self, context: dg.AssetExecutionContext, stage: str, force: bool = False) -> StageRun:
        started = time.perf_counter()
        if not force:
            reasons = self.changes(stage)
            if reasons == []:  # no Pipes session is opened: nothing would speak to it
                seconds = time.perf_counter() - started
                context.log.info(f"{stage}: skipped by DVC: its code, params, inputs and outputs are unchanged")
                return StageRun(stage, False, seconds, self.lock_outs(stage))
            if reasons:
                context.log.info(f"{stage}: DVC reruns it for " + "; ".join(reasons[:12])
                                 + (f"; and {len(reasons) - 12} more" if len(reasons) > 12 else ""))
        command = [self.dvc, "repro", "--single-item", stage] + (["--force"] if force else [])
        context.log.info(f"running `{' '.join(command[1:])}` in {self.root}")
        tail: deque[str] = deque(maxlen=60)
        with dg.open_pipes_session(context=context, context_injector=dg.PipesTempFileContextInjector(),
                                   message_reader=dg.PipesTempFileMessageReader()) as session:
            env = {**os.environ, **session.get_bootstrap_env_vars()}
            # The tether runs dvc in a process group of its own and stops that whole group
            # (dvc, its shell, byol) when this step is interrupted or dies.
            tethered = [sys.executable, str(TETHER), str(os.getpid()), str(STOP_GRACE), "--", *command]
            process = subprocess.Popen(tethered, cwd=self.root, env=env, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True, start_new_session=True)
            try:
                for line in process.stdout:
                    sys.stdout.write(line)  # the step's captured output in the UI
                    tail.append(line.rstrip("\n"))
                code = process.wait()
            except BaseException:  # cancelled from the UI, SIGTERM/SIGINT to the run: stop dvc and byol
                self._stop(context, stage, process)
                raise
            finally:
                process.stdout.close()
        seconds = time.perf_counter() - started
        if code == 127 and any("command not found" in line for line in tail):
            raise dg.Failure(description=f"the dvc command {self.dvc!r} was not found: run `make setup` "
                                         "(it installs dvc in .venv-dvc and links .venv/bin/dvc)",
                             allow_retries=False)
        if code != 0:
            raise self._failure(stage, code, list(tail))
        messages = [m for m in session.get_custom_messages() if isinstance(m, dict) and m.get("stage") == stage]
        ran = any(line.startswith(f"Running stage '{stage}'") for line in tail) or bool(messages)
        run = StageRun(stage, ran, seconds, self.lock_outs(stage), messages[-1] if messages else {})
        context.log.info(f"{stage}: {'ran' if ran else 'skipped (inputs unchanged)'} in {seconds:.1f}s")
        return run

    @staticmethod
    def _stop(context: dg.AssetExecutionContext, stage: str, process: subprocess.Popen) -> None:
        """Stop the tethered tree and say so in the run's log: what was stopped, what it leaves.
        Dagster may interrupt a cancelled run more than once (its termination request and its
        cancellation thread); later interrupts wait until the tree is gone, so the run is only
        marked stopped once nothing of it runs any more."""
        with _interrupts_held():
            if process.poll() is None:
                process.terminate()
            try:
                rest, _ = process.communicate(timeout=2 * STOP_GRACE + 10)  # read on, so nobody blocks on the pipe
            except subprocess.TimeoutExpired:
                process.kill()
                rest, _ = process.communicate()
        sys.stdout.write(rest or "")
        context.log.warning(
            f"interrupted: stopped `dvc repro {stage}` and the byol command below it (exit {process.returncode}); "
            f"DVC's lock is released. The stage's outputs may be missing until it runs again; the next run "
            f"reruns it{', and pretraining resumes from its last checkpoint' if stage == 'pretrain' else ''}.")

    @staticmethod
    def _failure(stage: str, code: int, tail: list[str]) -> dg.Failure:
        """The stage's own error message when it gave one; retries only for what may pass."""
        marker = f"byol {stage}: error:"
        start = next((i for i, line in enumerate(tail) if line.startswith(marker)), None)
        if start is not None:
            lines = [line for line in tail[start:] if not line.startswith("ERROR: failed to reproduce")]
            message = "\n".join(lines)
        else:
            message = "\n".join(tail[-15:])
        transient = start is None and any(sign in line for line in tail for sign in _TRANSIENT)
        return dg.Failure(
            description=f"dvc repro of stage '{stage}' failed (exit {code}): {message}",
            metadata={"stage": stage, "exit code": code, "retryable": transient},
            allow_retries=transient)


def json_file(path: Path) -> dict:
    """A metrics file a stage wrote; missing means the stage's outputs are not in place."""
    if not path.is_file():
        raise dg.Failure(description=f"{path} is missing: run the stage (or `dvc checkout`) first.",
                         allow_retries=False)
    return json.loads(path.read_text())
