"""A run whose worker died (kill -9, the machine went down) is marked failed.

Dagster's run monitoring can only ask run launchers that report a worker's health, and the
default launcher (a process on this machine) does not: a run whose worker was killed would
stay "started" for ever, and automation would wait on it. This sensor looks at every
started run's worker process, whose pid the run's own "Executing steps in process" event
records, and reports the run failed once that process is gone. The next run then resumes
pretraining from its checkpoint (DVC's and pretrain's locks die with their processes)."""

from __future__ import annotations

import dagster as dg

from byol_core.io.proc import alive

# Run workers that are processes on this machine: the default launcher's, and the in-process
# one of `dagster dev`'s tests (not exported by dagster, so named).
LOCAL_LAUNCHERS = ("DefaultRunLauncher", "SyncInMemoryRunLauncher")


def worker_pid(instance: dg.DagsterInstance, run_id: str) -> int | None:
    """The pid of the run's latest worker process, from its engine events."""
    found = None
    for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
        event = record.dagster_event
        pid = event.engine_event_data.metadata.get("pid") if event and event.engine_event_data else None
        try:
            found = int(pid.value) if pid is not None else found
        except (TypeError, ValueError):
            continue
    return found


@dg.sensor(minimum_interval_seconds=20, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Mark failed every started run whose worker process is gone (killed or crashed).")
def fail_dead_runs(context: dg.SensorEvaluationContext):
    instance = context.instance
    if not any(cls.__name__ in LOCAL_LAUNCHERS for cls in type(instance.run_launcher).__mro__):  # workers elsewhere: not ours to judge
        return dg.SkipReason(f"runs are launched by {type(instance.run_launcher).__name__}, not on this machine")
    failed = []
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])):
        pid = worker_pid(instance, run.run_id)
        if pid is None or alive(pid):  # a reused pid errs on the safe side: the run is left alone
            continue
        instance.report_run_failed(run, message=(
            f"The run worker (pid {pid}) is gone: killed or crashed, so the run cannot finish. Run it again: "
            "DVC reruns what is not done, and pretraining resumes from its last checkpoint."))
        # Its place in the "dvc" pool would otherwise stay taken, and every later run queue behind it.
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        failed.append(run.run_id)
    return dg.SkipReason(f"marked failed: {', '.join(failed)}" if failed else "every started run has its worker")
