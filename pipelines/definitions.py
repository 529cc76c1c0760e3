"""The Dagster code location: `dg dev` / `dagster dev` (run from the repository root) load
``defs`` from here. BYOL_PROJECT_DIR points the assets at another checkout of the project."""

from __future__ import annotations

import os

import dagster as dg

from pipelines.assets import ASSETS, raw_source_files
from pipelines.checks import CHECKS
from pipelines.k8s import executor
from pipelines.monitor import fail_dead_runs
from pipelines.resources import REPO_ROOT, DvcProject
from pipelines.schedules import observe_source_data, retrain_job, retrain_on_new_data, weekly_retrain

defs = dg.Definitions(
    assets=[raw_source_files, *ASSETS],
    asset_checks=CHECKS,
    jobs=[retrain_job],
    schedules=[weekly_retrain],
    sensors=[observe_source_data, retrain_on_new_data, fail_dead_runs],
    # A resource without config: the launchpad offers only run knobs (`force`), never where
    # the project lives (BYOL_PROJECT_DIR sets that, for the whole code location).
    resources={"dvc": dg.ResourceDefinition.hardcoded_resource(
        DvcProject(project_dir=os.environ.get("BYOL_PROJECT_DIR", str(REPO_ROOT))),
        "The project folder (dvc.yaml, params.yaml) and its dvc command.")},
    # One process per run; in the Kubernetes deployment (BYOL_EXECUTOR=k8s) one pod per step,
    # so that only pretraining asks for a GPU (pipelines/k8s.py).
    executor=executor(),
)
