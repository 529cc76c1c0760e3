"""Dagster definitions for byol-pipeline: the raw source files as an observable source
asset, one asset per DVC stage, asset checks, declarative automation on new data, a
retraining job with a weekly schedule, and a sensor that fails runs whose worker died.
Thin by design: every asset runs its stage through `dvc repro` and reports what the stage
wrote."""
