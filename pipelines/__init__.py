"""Dagster definitions for byol-pipeline: one asset per DVC stage, asset checks, a
retraining job with a weekly schedule and a new-data sensor. Thin by design: every asset
runs its stage through `dvc repro` and reports what the stage wrote."""
