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
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import yaml
from pydantic import Field

from byol_core.config import Params, load_params
from byol_core.errors import ByolError
from pipelines import dvclock, restore

REPO_ROOT = Path(__file__).resolve().parents[1]
# Failures that another attempt can fix: DVC's repo lock held by a process outside
# Dagster's pool, or the stage killed from outside (pretrain then resumes from its
# checkpoint). Anything else, such as bad params or bad data, fails for good.
_TRANSIENT = ("Unable to acquire lock", "is busy", "exited with -9", "exited with -15",
              "exited with 137", "exited with 143")
TETHER = Path(__file__).with_name("tether.py")
STATUS_TIMEOUT = 600  # seconds for `dvc status` or `dvc checkout` (a large prepared folder to hash or copy)
REMOTE_ENV = "BYOL_DVC_REMOTE"  # the remote's name; its URL and credentials live in DVC's config, never here
TRANSFER_TIMEOUT = 3600  # seconds for a `dvc push` of one stage
_DEFAULTED: set[tuple[str, str]] = set()  # (checkout, remote) made the checkout's default in this process
LOCK_ENTRY = "dvc lock entry"  # metadata: the stage's dvc.lock entry, for machines that run what follows
STOP_GRACE = 20  # seconds a stopped stage has to clean up after SIGINT, before SIGKILL
SKIPPED = ("skipped by DVC: its inputs did not change; the figures are read from its current outputs "
           "(not recomputed), those of the run that made them")
RESTORED = ("restored: these inputs were run before (DVC's run-cache, or the dvc.lock entry an earlier run "
            "recorded); that run's outputs were checked out, not recomputed, and the figures are read from them")
OWN_ENTRY = "this checkout's dvc.lock"  # restored from the entry the checkout already held
RESTORED_FROM = "restored from"  # metadata: the run whose dvc.lock entry was adopted, or DVC's run-cache


@contextmanager
def _interrupts_held():
    """SIGINT and SIGTERM are ignored inside the block (on the main thread, where Python
    handles signals); the handlers come back after it. A handler that Python did not install
    (``signal.signal`` returns None for it) cannot be put back from Python: the default action
    comes back instead, never the ignoring, which every process started later would inherit
    (an ignored SIGTERM survives exec, so `dvc`, `byol` and `dg dev` could not be stopped)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, signal.SIG_IGN) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)


def tethered(command: list[str]) -> list[str]:
    """``command`` under the tether: in a process group of its own, stopped whole when this
    step is interrupted or dies (see pipelines/tether.py)."""
    return [sys.executable, str(TETHER), str(os.getpid()), str(STOP_GRACE), "--", *command]


@contextmanager
def _quiet_pipes(context: dg.AssetExecutionContext, when: Callable[[], bool]):
    """Drop Dagster's "[pipes] did not receive any messages" warning at the end of the block
    if ``when()`` holds then: the byol command never started (DVC skipped the stage or
    restored it from its run-cache) or was stopped on purpose, so there was nothing to hear."""
    def keep(record: logging.LogRecord) -> bool:
        return not (str(record.msg).startswith("[pipes] did not receive any messages") and when())

    context.log.addFilter(keep)
    try:
        yield
    finally:
        context.log.removeFilter(keep)


def default_dvc() -> str:
    """The dvc that set-up links beside this Python (.venv/bin/dvc), else the one on PATH."""
    beside = Path(sys.executable).parent / "dvc"
    return str(beside) if beside.is_file() else "dvc"


@dataclass
class StageRun:
    """What one `dvc repro --single-item` did."""

    stage: str
    ran: bool  # False: DVC found its inputs unchanged and skipped it, or restored it from its run-cache
    seconds: float
    outs: dict[str, str]  # dvc.lock: output path -> md5
    reported: dict = field(default_factory=dict)  # what the byol command sent through Pipes
    cached: bool = False  # these inputs were run before, and DVC checked out that run's outputs
    restored_from: str | None = None  # "run <id>" whose dvc.lock entry was adopted, OWN_ENTRY; None: DVC's run-cache
    transfers: dict = field(default_factory=dict)  # what went through the shared DVC remote, if any

    @property
    def data_version(self) -> dg.DataVersion:
        """One version for the stage's outputs: a hash of their DVC hashes."""
        blob = json.dumps(sorted(self.outs.items())).encode()
        return dg.DataVersion(hashlib.sha256(blob).hexdigest()[:16])

    def metadata(self) -> dict:
        status = "ran" if self.ran else RESTORED if self.cached else SKIPPED
        meta = {"dvc stage": dg.MetadataValue.text(status)}
        if self.ran:
            meta["dvc seconds"] = dg.MetadataValue.float(round(self.seconds, 2))
        elif self.cached:
            meta[RESTORED_FROM] = dg.MetadataValue.text(self.restored_from or "DVC's run-cache")
        for path, md5 in self.outs.items():
            meta[f"dvc md5 {path}"] = dg.MetadataValue.text(md5)
        meta.update(self.transfers)
        if self.reported.get("summary"):
            meta["summary"] = dg.MetadataValue.text(self.reported["summary"])
        return meta


class DvcProject(dg.ConfigurableResource):
    """A checkout of this project (dvc.yaml, params.yaml, .dvc/) and its dvc command."""

    project_dir: str = Field(default=str(REPO_ROOT), description="The project folder: where dvc.yaml lies.")
    dvc: str = Field(default_factory=default_dvc, description="The dvc command (its own environment).")
    remote: str | None = Field(
        default_factory=lambda: os.environ.get(REMOTE_ENV) or None,
        description="A DVC remote (its name in .dvc/config or config.local) that the stages share with other "
                    "machines: before a stage, pull its inputs and DVC's run-cache from it; after, push its "
                    "outputs and run-cache. Unset: everything stays on this machine.")

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
        """dvc.lock's output path -> md5 for ``stage`` ({} when it has no entry)."""
        entry = self.lock_entry(stage) or {}
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

    def push(self, context: dg.AssetExecutionContext, stages: list[str], run_cache: bool = True) -> dict:
        """``dvc push`` of the stages' outputs and (``run_cache``) DVC's run-cache to the shared
        remote, so that another machine can restore them instead of running them. Returns figures."""
        stage = " ".join(stages)
        command = [self.dvc, "push", *(["--run-cache"] if run_cache else []), "-r", self.remote, *stages]
        started = time.perf_counter()
        try:
            done = subprocess.run(tethered(command), cwd=self.root, capture_output=True, text=True,
                                  timeout=TRANSFER_TIMEOUT, start_new_session=True)
        except subprocess.TimeoutExpired:
            raise dg.Failure(description=f"`dvc push` of {stage} to remote '{self.remote}' took more than "
                                         f"{TRANSFER_TIMEOUT}s", allow_retries=True) from None
        seconds = time.perf_counter() - started
        output = done.stdout + done.stderr
        if done.returncode != 0:
            last = " ".join([line.strip() for line in output.splitlines() if line.strip()][-2:])
            raise dg.Failure(description=f"`{' '.join(command[1:])}` failed (exit "
                                         f"{done.returncode}): {last}. Check that the remote is reachable with the "
                                         "credentials in DVC's config (`dvc remote list`, .dvc/config.local, the "
                                         "SSH agent).", allow_retries=True)
        files = sum(int(n) for n in re.findall(r"(\d+) files? pushed", output))
        context.log.info(f"{stage}: pushed {files} files{' and the run-cache' if run_cache else ''} to remote "
                         f"'{self.remote}' in {seconds:.1f}s")
        return {"dvc pushed files": dg.MetadataValue.int(files),
                "dvc push seconds": dg.MetadataValue.float(round(seconds, 2))}

    def fetch(self, entries: dict[str, dict]) -> None:
        """With a shared remote: the outputs of these stages (name -> dvc.lock entry, as the
        machines that ran them recorded it) pulled into this checkout, for a step that reads
        them without running a stage (an asset check on another worker). Without one: nothing."""
        if not self.remote or not entries:
            return
        self.use_remote()
        self.adopt(entries)
        command = [self.dvc, "pull", "--force", *entries]
        try:
            done = subprocess.run(tethered(command), cwd=self.root, capture_output=True, text=True,
                                  timeout=TRANSFER_TIMEOUT, start_new_session=True)
        except subprocess.TimeoutExpired:
            raise dg.Failure(description=f"`dvc pull --force {' '.join(entries)}` took more than "
                                         f"{TRANSFER_TIMEOUT}s", allow_retries=True) from None
        if done.returncode != 0:
            last = " ".join([line.strip() for line in (done.stdout + done.stderr).splitlines() if line.strip()][-2:])
            raise dg.Failure(description=f"`dvc pull {' '.join(entries)}` from remote '{self.remote}' failed (exit "
                                         f"{done.returncode}): {last}. Check that the remote is reachable and holds "
                                         "those outputs (they are pushed when their stage runs).", allow_retries=True)

    def use_remote(self) -> None:
        """Make the shared remote this checkout's default (in .dvc/config.local, this machine's
        own file): `dvc repro --pull` pulls from the default remote and has no option to name one."""
        if (str(self.root), self.remote) in _DEFAULTED:
            return
        done = subprocess.run([self.dvc, "remote", "default", "--local", self.remote], cwd=self.root,
                              capture_output=True, text=True, timeout=STATUS_TIMEOUT)
        if done.returncode != 0:
            raise dg.Failure(description=f"DVC remote '{self.remote}' ({REMOTE_ENV}) is not set up in {self.root}: "
                                         f"{(done.stderr or done.stdout).strip()[-300:]}. Add it with `dvc remote add "
                                         f"--local {self.remote} URL` and its credentials with `dvc remote modify "
                                         f"--local {self.remote} ...` (or the SSH agent).", allow_retries=False)
        _DEFAULTED.add((str(self.root), self.remote))

    def adopt(self, entries: dict[str, dict | None]) -> list[str]:
        """Write stages' dvc.lock entries, as the machines that ran them recorded them, into
        this checkout's dvc.lock (an entry None: drop the stage's entry): DVC then pulls
        exactly those outputs as this stage's inputs (each machine's dvc.lock is its own; the
        Dagster run carries the entries).

        Where an entry replaces another, this checkout's files of that stage are of the other
        run, and they are removed (they stay in DVC's cache). DVC pulls only the inputs that
        are missing (`dvc repro --pull`); one it finds in place is used as it is, so a worker
        that kept an earlier run's prepared data would train on it. Returns what was removed."""
        if not entries:
            return []
        path = self.root / "dvc.lock"
        lock = self.lock() or {"schema": "2.0"}
        stages = lock.setdefault("stages", {})
        replaced = [name for name, entry in entries.items() if stages.get(name) != entry]
        if not replaced:
            return []
        removed = []
        for name in replaced:
            for out in (stages.get(name) or {}).get("outs", []) + (entries[name] or {}).get("outs", []):
                target = self.root / out["path"]
                if not target.resolve().is_relative_to(self.root.resolve()):
                    continue  # an entry names outputs inside the project only; never touch anything else
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                elif target.exists() or target.is_symlink():
                    target.unlink()
                else:
                    continue
                removed.append(out["path"])
        for name in replaced:
            if entries[name] is None:
                stages.pop(name, None)
            else:
                stages[name] = entries[name]
        temp = path.with_name(f".dvc.lock.{os.getpid()}")
        temp.write_text(yaml.safe_dump(lock, sort_keys=False))
        os.replace(temp, path)
        return removed

    @staticmethod
    def _say_removed(context, removed: list[str]) -> None:
        if removed:
            context.log.info(f"removed {', '.join(removed)}: made by another run than the one this step uses "
                             "(DVC's cache keeps them; DVC pulls the recorded ones where a stage needs them)")

    def lock(self) -> dict:
        """This checkout's dvc.lock, read as DVC reads it ({} when there is none)."""
        path = self.root / "dvc.lock"
        return (restore.load_yaml(path.read_text()) if path.is_file() else None) or {}

    def lock_entry(self, stage: str) -> dict | None:
        """The stage's entry in this checkout's dvc.lock, as DVC wrote it; None when it has none."""
        return self.lock().get("stages", {}).get(stage)

    def repro(self, context: dg.AssetExecutionContext, stage: str, force: bool = False,
              upstream: dict[str, dict] | None = None, earlier: list[restore.Earlier] | None = None,
              publish: bool = True, along: tuple[str, ...] = ()) -> StageRun:
        """Run the stage through DVC. With a shared remote, first adopt the upstream stages'
        lock entries and, when one of ``earlier`` (this stage's entries as earlier runs recorded
        them, newest first) repeats the stage as it stands, that one too: DVC then finds the
        stage unchanged and pulls that run's outputs only (pipelines/restore.py). Otherwise
        `dvc repro --pull` (the inputs, and DVC's run-cache for runs made outside Dagster).
        Then (``publish``) push what is new: this stage's outputs and those of the stages
        ``along`` (run before it in the same step, not pushed then)."""
        healed = dvclock.heal(self.root)  # a run stopped while dvc wrote its lock table
        if healed:
            context.log.warning(f"{stage}: {healed}")
        if not self.remote:
            return self._repro(context, stage, force)
        self.use_remote()
        self._say_removed(context, self.adopt(upstream or {}))
        defined = restore.spec(self.root, stage)
        always = defined is not None and defined.always_changed
        found = None
        if not force and defined is not None and not always:
            lock = self.lock()
            own = (lock.get("stages") or {}).get(stage)
            # DVC takes a missing input as unchanged (it pulls it if the stage must run), so a
            # checkout's own entry of other inputs would let it skip the stage or pull its old
            # outputs: that entry counts only if it repeats the stage as it stands.
            if own is not None and restore.repeats(defined, own, self.root, restore.produced(lock, stage)):
                found = restore.Earlier(OWN_ENTRY, own)
            else:
                found = restore.matching(defined, self.root, lock, stage, earlier or [])
                if found is not None:
                    context.log.info(f"{stage}: run {found.run_id} ran these inputs (the same cmd, params, code and "
                                     "data): its dvc.lock entry is adopted, and DVC pulls its outputs if it agrees")
                self._say_removed(context, self.adopt({stage: found.entry if found is not None else None}))
        # DVC's run-cache is left alone where it cannot help: a stage that always runs, or one
        # whose earlier run is known (pulling it copies every entry the remote holds).
        run = self._repro(context, stage, force, run_cache=found is None and not always)
        adopted = found is not None and found.run_id != OWN_ENTRY and not run.ran
        if adopted:
            run.cached, run.restored_from = True, f"run {found.run_id}"
        elif run.cached and found is not None:
            run.restored_from = OWN_ENTRY
        if not publish:
            return run
        # An adopted entry was recorded only after its run had pushed its outputs, and its
        # inputs (the outputs of the stages along, which it names by md5). This checkout's own
        # entry may never have been pushed (a failed push, a dvc.lock from git): it is pushed.
        recorded = {(dep["path"], dep.get("md5")) for dep in found.entry.get("deps", [])} if adopted else set()
        unpushed = [name for name in along if not set(self.lock_outs(name).items()) <= recorded]
        if adopted and not unpushed:
            context.log.info(f"{stage}: nothing to push: run {found.run_id} pushed these outputs and inputs before "
                             f"it recorded them, and they came from remote '{self.remote}'")
            run.transfers = {"dvc pushed files": dg.MetadataValue.int(0)}
        else:
            targets = unpushed + ([] if adopted else [stage])
            run.transfers = self.push(context, targets, run_cache=not always)
        entry = self.lock_entry(stage)
        if entry is not None:
            run.transfers[LOCK_ENTRY] = dg.MetadataValue.json({"stage": stage, "entry": entry})
        return run

    def _repro(self, context: dg.AssetExecutionContext, stage: str, force: bool = False,
               run_cache: bool = True) -> StageRun:
        started = time.perf_counter()
        # With a shared remote, `dvc repro --pull` decides alone: a worker's clone lacks the
        # inputs until it pulls them, so a `dvc status` first would only say so, at the cost of
        # one more DVC start per step (about 1.5 s of a restored step's 5).
        if not force and not self.remote:
            reasons = self.changes(stage)
            if reasons == []:  # no Pipes session is opened: nothing would speak to it
                seconds = time.perf_counter() - started
                context.log.info(f"{stage}: skipped by DVC: its code, params, inputs and outputs are unchanged")
                return StageRun(stage, False, seconds, self.lock_outs(stage))
            if reasons:
                context.log.info(f"{stage}: DVC reruns it for " + "; ".join(reasons[:12])
                                 + (f"; and {len(reasons) - 12} more" if len(reasons) > 12 else ""))
        command = [self.dvc, "repro", "--single-item", stage] + (["--force"] if force else []) \
            + (["--pull"] if self.remote else []) + ([] if run_cache else ["--no-run-cache"])
        context.log.info(f"running `{' '.join(command[1:])}` in {self.root}")
        tail: deque[str] = deque(maxlen=60)
        # "started": DVC ran the stage's command; "cached": DVC checked out the outputs of an
        # earlier run of the same inputs instead (its run-cache); "stopped": this step stopped it.
        seen: set[str] = set()
        with _quiet_pipes(context, lambda: "started" not in seen or "stopped" in seen), \
                dg.open_pipes_session(context=context, context_injector=dg.PipesTempFileContextInjector(),
                                      message_reader=dg.PipesTempFileMessageReader()) as session:
            env = {**os.environ, **session.get_bootstrap_env_vars()}
            # The tether runs dvc in a process group of its own and stops that whole group
            # (dvc, its shell, byol) when this step is interrupted or dies.
            process = subprocess.Popen(tethered(command), cwd=self.root, env=env, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True, start_new_session=True)
            try:
                for line in process.stdout:
                    sys.stdout.write(line)  # the step's captured output in the UI
                    tail.append(line.rstrip("\n"))
                    if line.startswith(f"Running stage '{stage}'"):
                        seen.add("started")
                    elif line.startswith((f"Stage '{stage}' is cached - skipping run",
                                          f"Pulling data for stage: '{stage}'")):
                        seen.add("cached")  # from DVC's run-cache, or an adopted entry's outputs pulled
                code = process.wait()
            except BaseException:  # cancelled from the UI, SIGTERM/SIGINT to the run: stop dvc and byol
                seen.add("stopped")
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
            failure = self._failure(stage, code, list(tail))
            if "started" in seen:  # DVC deleted the outputs before it started the stage
                problem = self.restore(stage)
                if problem is None:
                    context.log.info(f"{stage}: its last good outputs are back in place (`dvc checkout {stage}`)")
                else:
                    context.log.warning(f"{stage}: {problem}")
            raise failure
        messages = [m for m in session.get_custom_messages() if isinstance(m, dict) and m.get("stage") == stage]
        ran = "started" in seen or bool(messages)
        run = StageRun(stage, ran, seconds, self.lock_outs(stage), messages[-1] if messages else {},
                       cached=not ran and "cached" in seen)
        done = ("ran" if ran else "restored (these inputs were run before: DVC checked out that run's outputs)"
                if run.cached else "skipped (inputs unchanged)")
        context.log.info(f"{stage}: {done} in {seconds:.1f}s")
        return run

    def restore(self, stage: str) -> str | None:
        """Put back the outputs of ``stage`` that dvc.lock records (`dvc checkout <stage>`, under
        the tether). DVC deletes a stage's outputs before it runs the stage, so a failed or
        stopped run would otherwise leave them missing while the asset still shows its last
        materialization as current. Returns None when they are in place, else what went wrong."""
        if not self.lock_outs(stage):
            return None  # never reproduced: nothing to put back
        dvclock.heal(self.root)  # the stopped dvc may have been killed while writing its lock table
        process = subprocess.Popen(tethered([self.dvc, "checkout", stage]), cwd=self.root, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            output, _ = process.communicate(timeout=STATUS_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.terminate()  # the tether stops dvc with it
            process.communicate()
            output = f"it took more than {STATUS_TIMEOUT}s"
        if process.returncode == 0:
            return None
        last = [line for line in output.splitlines() if line.strip()][-1:] or [f"exit {process.returncode}"]
        return (f"its outputs could not be put back with `dvc checkout {stage}` ({last[0].strip()}); "
                f"they may be missing: run `dvc checkout {stage}` in {self.root}")

    def _stop(self, context: dg.AssetExecutionContext, stage: str, process: subprocess.Popen) -> None:
        """Stop the tethered tree, put the stage's last good outputs back, and say so in one
        warning: what was stopped, what is in place. Dagster may interrupt a cancelled run
        more than once (its termination request and its cancellation thread); later
        interrupts wait until this is done, so the run is only marked stopped once nothing of
        it runs any more and the outputs are back."""
        with _interrupts_held():
            if process.poll() is None:
                process.terminate()
            try:
                rest, _ = process.communicate(timeout=2 * STOP_GRACE + 10)  # read on, so nobody blocks on the pipe
            except subprocess.TimeoutExpired:
                process.kill()
                rest, _ = process.communicate()
            sys.stdout.write(rest or "")
            problem = self.restore(stage)
        outputs = (f"its last good outputs are back in place (`dvc checkout {stage}`)" if problem is None
                   else problem)
        context.log.warning(
            f"interrupted: stopped `dvc repro {stage}` and the byol command below it (exit {process.returncode}); "
            f"DVC's lock is released and {outputs}. The next run reruns the stage if its inputs changed"
            f"{', and pretraining resumes from its last checkpoint' if stage == 'pretrain' else ''}.")

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
