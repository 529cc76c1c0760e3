"""Steps on other machines: dagster-celery's executor with a Redis broker (BYOL_EXECUTOR=celery).

The run's orchestrator sends each step to a Celery queue; a worker that listens on the queue
runs the step in its own clone of the project, where the asset runs its DVC stage (pulling its
inputs and the run-cache from the shared DVC remote, pushing its outputs after). Pretraining
goes to the ``gpu`` queue, every other step to ``cpu`` (the ``dagster-celery/queue`` op tag).

Everything comes from the environment, the same on the orchestrator and on every worker:

- ``BYOL_CELERY_BROKER``: the broker's URL (default ``redis://127.0.0.1:6379/0``);
- ``BYOL_CELERY_BACKEND``: where workers put step results (default: the broker's URL);
- ``BYOL_WORKER_LOST_SECONDS``: how long a worker that holds a started step may go without
  answering a ping before the step counts as lost (default 60).

Celery never notices a worker that dies with a step (kill -9, a machine that goes down): the
step would stay "started" for ever. :class:`WatchedResult` asks the worker that took the step
whether it still answers; when it has not for ``BYOL_WORKER_LOST_SECONDS``, the run fails
with the worker's name, and a re-execution from failure (the UI's button, or the daemon's run
retries) sends the step to another worker. Pretraining then resumes from its last checkpoint,
which lies where every gpu worker finds it (paths.resume on shared storage;
docs/machines.md).

A worker: ``python -m pipelines.workers --queues gpu`` in its clone (see :func:`main`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import dagster as dg

BROKER_VARIABLE = "BYOL_CELERY_BROKER"
BACKEND_VARIABLE = "BYOL_CELERY_BACKEND"
LOST_VARIABLE = "BYOL_WORKER_LOST_SECONDS"
DEFAULT_BROKER = "redis://127.0.0.1:6379/0"
DEFAULT_LOST_SECONDS = 60.0
QUEUE_TAG = "dagster-celery/queue"
GPU_QUEUE, CPU_QUEUE = "gpu", "cpu"
QUEUES = (GPU_QUEUE, CPU_QUEUE)
PING_EVERY = 5.0  # seconds between two pings of the worker that holds a started step
TICK_SECONDS = 0.1  # seconds between two looks of the orchestrator at its steps' results


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise dg.DagsterInvariantViolationError(
            f"{name}={raw!r} is not a number of seconds above 0: set it to how long a worker may go without "
            f"answering before its step counts as lost (default {DEFAULT_LOST_SECONDS:g}), or unset it")
    return value


def celery_config() -> dict:
    """The executor's config, as the orchestrator and every worker must share it."""
    broker = os.environ.get(BROKER_VARIABLE) or DEFAULT_BROKER
    if "://" not in broker:
        raise dg.DagsterInvariantViolationError(
            f"{BROKER_VARIABLE}={broker!r} is not a broker URL: set it to e.g. redis://HOST:6379/0 (the Redis "
            "server that the orchestrator and every worker reach), or unset it for redis://127.0.0.1:6379/0")
    return {
        "broker": broker,
        "backend": os.environ.get(BACKEND_VARIABLE) or broker,
        "config_source": {
            # A step without a queue tag (the asset checks) goes to the cpu workers.
            "task_default_queue": CPU_QUEUE,
            # The worker reports when it starts a step, with its name: what WatchedResult pings.
            "task_track_started": True,
            # One step at a time per worker, and none reserved ahead: a queued step waits in the
            # broker for whichever worker is free, not behind a long step on a busy one.
            "worker_prefetch_multiplier": 1,
            "worker_concurrency": 1,
        },
    }


class WatchedResult:
    """A step's Celery result, as dagster-celery's loop polls it (``ready``, ``get``,
    ``revoke``), that also counts as ready, with an error, once the worker that started the
    step has stopped answering pings for ``lost_after`` seconds."""

    def __init__(self, result, app, step_key: str, lost_after: float, on_lost=None):
        self.result, self.app, self.step_key, self.lost_after = result, app, step_key, lost_after
        self.on_lost = on_lost or _raise  # message -> the step's events in its stead
        self.answered = time.monotonic()  # the last time the worker answered (or the step was queued)
        self.pinged = 0.0
        self.lost: str | None = None

    def worker(self) -> str | None:
        """The name of the worker that started the step; None while it waits in the queue."""
        if self.result.state != "STARTED":
            return None
        info = self.result.info
        return info.get("hostname") if isinstance(info, dict) else None

    def ready(self) -> bool:
        if self.result.ready():
            return True
        now = time.monotonic()
        if now - self.pinged < PING_EVERY:
            return False
        self.pinged = now
        name = self.worker()
        if name is None or self.app.control.ping(destination=[name], timeout=2.0):
            self.answered = now
            return False
        if now - self.answered < self.lost_after:
            return False
        self.lost = name
        return True

    def get(self):
        if self.lost is not None:
            return self.on_lost(
                f"celery worker {self.lost} took step {self.step_key} and has not answered for "
                f"{self.lost_after:g}s ({LOST_VARIABLE}): it died or lost the network, and the step with it. "
                "Re-execute the run from failure: the step goes to another worker, and pretraining resumes from "
                "its last checkpoint.")
        return self.result.get()

    def revoke(self):
        return self.result.revoke()


class WorkerLost(Exception):
    pass


def _raise(message: str):
    raise WorkerLost(message)


def _step_failure(context, step):
    """``on_lost`` for a step of a run: a STEP_FAILURE event with the message, stored in the
    run's event log and returned (serialized, as a worker's events are) for the executor's
    loop. So the step shows failed, gives its place in the "dvc" pool back (an error raised
    instead would leave it taken, and every later run would wait behind it), and a
    re-execution from failure runs it again."""
    from dagster._core.events import DagsterEvent
    from dagster._core.execution.plan.objects import ErrorSource, StepFailureData
    from dagster._serdes import serialize_value
    from dagster._utils.error import SerializableErrorInfo

    def fail(message: str) -> list[str]:
        error = SerializableErrorInfo(message=message, stack=[], cls_name=WorkerLost.__name__)
        event = DagsterEvent.step_failure_event(
            context.for_step(step), StepFailureData(error=error, user_failure_data=None,
                                                    error_source=ErrorSource.UNEXPECTED_ERROR), message=message)
        return [serialize_value(event)]

    return fail


def _celery_executor():
    from dagster._core.definitions.executor_definition import multiple_process_executor_requirements
    from dagster._core.execution.retries import RetryMode
    from dagster_celery import core_execution_loop
    from dagster_celery.core_execution_loop import core_celery_execution_loop
    from dagster_celery.executor import CELERY_CONFIG, CeleryExecutor, _submit_task

    class WatchedCeleryExecutor(CeleryExecutor):
        """dagster-celery's executor, whose results are :class:`WatchedResult`."""

        def __init__(self, lost_after: float, **kwargs):
            super().__init__(**kwargs)
            self.lost_after = lost_after

        def execute(self, plan_context, execution_plan):
            def submit(app, context, step, queue, priority, known_state):
                result = _submit_task(app, context, step, queue, priority, known_state)
                return WatchedResult(result, app, step.key, self.lost_after, _step_failure(context, step))

            # dagster-celery's loop sleeps a second between two looks at the results, so each
            # step of a chain started up to a second after the one before it ended (5 to 8 s of
            # a run that restores everything); a look is one Redis round trip.
            core_execution_loop.TICK_SECONDS = TICK_SECONDS
            return core_celery_execution_loop(plan_context, execution_plan, step_execution_fn=submit)

    @dg.executor(name="celery", config_schema=CELERY_CONFIG, requirements=multiple_process_executor_requirements())
    def celery_executor(init_context):
        config = init_context.executor_config
        return WatchedCeleryExecutor(
            lost_after=_env_float(LOST_VARIABLE, DEFAULT_LOST_SECONDS), broker=config.get("broker"),
            backend=config.get("backend"), config_source=config.get("config_source"),
            include=config.get("include"), retries=RetryMode.from_config(config["retries"]))

    return celery_executor.configured(celery_config())


def executor() -> dg.ExecutorDefinition:
    """The Celery executor, configured from the environment (checked here, at load time)."""
    _env_float(LOST_VARIABLE, DEFAULT_LOST_SECONDS)
    try:
        return _celery_executor()
    except ImportError as exc:
        raise dg.DagsterInvariantViolationError(
            f"BYOL_EXECUTOR=celery needs dagster-celery and redis ({exc}): run `make setup`") from None


def app():
    """The Celery app a worker runs: dagster-celery's, with dagster-celery's step task."""
    from dagster._core.execution.retries import RetryMode
    from dagster_celery.executor import CeleryExecutor
    from dagster_celery.make_app import make_app
    from dagster_celery.tasks import create_task

    config = celery_config()
    celery = make_app(CeleryExecutor(retries=RetryMode(RetryMode.DISABLED), broker=config["broker"],
                                     backend=config["backend"], config_source=config["config_source"]).app_args())
    create_task(celery)
    return celery


def main(argv: list[str] | None = None) -> None:
    """Run a Celery worker for this clone's steps (in the foreground, until stopped)."""
    parser = argparse.ArgumentParser(prog="python -m pipelines.workers", description=(
        "A Celery worker that runs this project's steps in this clone. The broker and backend come from "
        f"{BROKER_VARIABLE} and {BACKEND_VARIABLE}; the instance from DAGSTER_HOME (or the orchestrator's "
        "instance settings, e.g. DAGSTER_PG_*); the DVC remote from BYOL_DVC_REMOTE."))
    parser.add_argument("--queues", default=",".join(QUEUES),
                        help=f"comma-separated queues to take steps from: {GPU_QUEUE} (pretraining), {CPU_QUEUE} "
                             "(the rest); default both")
    parser.add_argument("--name", default=None, help="the worker's name (default: its first queue)")
    args = parser.parse_args(argv)
    queues = [q.strip() for q in args.queues.split(",") if q.strip()]
    unknown = [q for q in queues if q not in QUEUES]
    if not queues or unknown:
        parser.error(f"--queues {args.queues!r}: use {GPU_QUEUE}, {CPU_QUEUE} or both, comma-separated")
    root = Path(__file__).resolve().parents[1]
    # The steps must run this clone's code, whatever working directory the orchestrator's
    # code pointer names: imported here, before any step, its modules are the ones the steps find.
    import pipelines.definitions  # noqa: F401

    name = f"{args.name or queues[0]}@%h"
    print(f"worker {name}: queues {','.join(queues)}, project {os.environ.get('BYOL_PROJECT_DIR', root)}",
          file=sys.stderr, flush=True)
    app().worker_main(["worker", "-Q", ",".join(queues), "-n", name, "--concurrency", "1",
                       "--prefetch-multiplier", "1", "--loglevel", "INFO", "--without-gossip", "--without-mingle"])


if __name__ == "__main__":
    main()
