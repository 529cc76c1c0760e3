"""Retraining. On new data, Dagster's own idiom: ``observe_source_data`` gives the raw files
(the source asset ``raw_source_files``) a new data version when they change, and the
stages' automation conditions, evaluated by ``retrain_on_new_data``, then ask for one run
of the chain. The observation is the scan stage's own scan (byol_core.data.scan): its fingerprint
is the md5 of the source listing, so it changes with the contents, not with a touch. On a
calendar: the ``retrain`` job and its weekly schedule, which retrains whether or not the
files changed. All three start stopped; switch them on in the UI
(Automation) or with `dagster schedule start` / `dagster sensor start`. A run whose data
did not change costs seconds: DVC skips every stage after ingest."""

from pathlib import Path

import dagster as dg

from pipelines.assets import GROUP, RAW_KEY, source_fingerprint
from pipelines.resources import DvcProject

RETRAIN_CRON = "0 3 * * 1"  # Mondays at 03:00 (the schedule's timezone below)

retrain_job = dg.define_asset_job(
    "retrain", selection=dg.AssetSelection.groups(GROUP),
    description="Materialize all five assets: `dvc repro` stage by stage, with the asset checks.")

weekly_retrain = dg.ScheduleDefinition(
    name="weekly_retrain", job=retrain_job, cron_schedule=RETRAIN_CRON, execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Retrain weekly. With unchanged data the run ends in seconds (DVC skips the stages).")


@dg.sensor(minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.STOPPED,
           description="Observe the files in params.yaml's data.source_dir every minute, as `byol scan` lists them "
                       "(reading only new or changed files): a new listing md5 becomes a new data version of "
                       "raw_source_files (no run is launched for it).")
def observe_source_data(context: dg.SensorEvaluationContext, dvc: DvcProject):
    params = dvc.params()
    folder = params.data.source_dir
    fingerprint = source_fingerprint(folder, params.paths.cache)
    if fingerprint == context.cursor:
        return dg.SkipReason(f"no change in {folder}")
    context.update_cursor(fingerprint)
    return dg.SensorResult(asset_events=[observation(folder, fingerprint)])


def observation(folder: Path, fingerprint: str) -> dg.AssetObservation:
    return dg.AssetObservation(asset_key=RAW_KEY, metadata={"folder": dg.MetadataValue.path(str(folder))},
                               tags={"dagster/data_version": fingerprint})


# Declarative automation over the stages: each asset asks to run when something upstream
# has a new version (a new observation of the raw files, or a stage that ran), once the
# blocking checks upstream passed. Evaluated by this sensor, on the daemon.
retrain_on_new_data = dg.AutomationConditionSensorDefinition(
    "retrain_on_new_data", target=dg.AssetSelection.groups(GROUP), minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Materialize the stages whose inputs have a new version: after observe_source_data sees new "
                "files, one run of the whole chain (DVC then reruns what changed).")
