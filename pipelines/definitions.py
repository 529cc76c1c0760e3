"""The Dagster code location: `dg dev` / `dagster dev` (run from the repository root) load
``defs`` from here. BYOL_PROJECT_DIR points the assets at another checkout of the project."""

from __future__ import annotations

import os

import dagster as dg

from pipelines.assets import ASSETS
from pipelines.checks import CHECKS
from pipelines.resources import REPO_ROOT, DvcProject
from pipelines.schedules import new_source_data, retrain_job, weekly_retrain

defs = dg.Definitions(
    assets=ASSETS,
    asset_checks=CHECKS,
    jobs=[retrain_job],
    schedules=[weekly_retrain],
    sensors=[new_source_data],
    resources={"dvc": DvcProject(project_dir=os.environ.get("BYOL_PROJECT_DIR", str(REPO_ROOT)))},
    # One process per run, not one per step: the steps take turns in the "dvc" pool anyway,
    # and a fresh process per step would re-import torch for each of the seven.
    executor=dg.in_process_executor,
)
