"""Retraining: one job over the five assets, a weekly schedule for it, and a sensor that
asks for it when the ingest source changes. Both start stopped; switch them on in the UI
(Automation) or with `dagster schedule start` / `dagster sensor start`. A run whose data
did not change costs seconds: DVC skips every stage after ingest."""

import hashlib
from pathlib import Path

import dagster as dg

from pipelines.assets import GROUP
from pipelines.resources import DvcProject

RETRAIN_CRON = "0 3 * * 1"  # Mondays at 03:00 (the schedule's timezone below)

retrain_job = dg.define_asset_job(
    "retrain", selection=dg.AssetSelection.groups(GROUP),
    description="Materialize all five assets: `dvc repro` stage by stage, with the asset checks.")

weekly_retrain = dg.ScheduleDefinition(
    name="weekly_retrain", job=retrain_job, cron_schedule=RETRAIN_CRON, execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Retrain weekly. With unchanged data the run ends in seconds (DVC skips the stages).")


def source_fingerprint(folder: Path) -> str:
    """A hash of every file's relative path, size and modification time under ``folder``:
    it changes when a file is added, removed, replaced or rewritten (DVC then compares the
    contents and decides what to rerun)."""
    digest = hashlib.sha256()
    if folder.is_dir():
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            stat = path.stat()
            digest.update(f"{path.relative_to(folder).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


@dg.sensor(job=retrain_job, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.STOPPED,
           description="Request a retraining run when the files in params.yaml's data.source_dir change.")
def new_source_data(context: dg.SensorEvaluationContext, dvc: DvcProject):
    folder = dvc.params().data.source_dir
    fingerprint = source_fingerprint(folder)
    if context.cursor is None:  # first look: remember what is there, train on changes from now on
        context.update_cursor(fingerprint)
        return dg.SkipReason(f"watching {folder} (fingerprint {fingerprint})")
    if fingerprint == context.cursor:
        return dg.SkipReason(f"no change in {folder}")
    context.update_cursor(fingerprint)
    return dg.RunRequest(run_key=f"source-{fingerprint}", tags={"byol/trigger": "new-source-data"})
