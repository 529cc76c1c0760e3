"""The schema of params.yaml, one module per group of sections.

DVC reruns a stage when a file it imports changes. So a stage imports the schema of the
sections it reads and no other: an edit to the export section's schema reruns export
alone, and one to ``checks`` (read by no stage) reruns nothing. The groups follow who
reads them:

  base      what every section shares: the frozen model, anchored paths, reading the
            YAML file, :func:`~byol_core.schema.base.restrict`          (every stage)
  paths     paths, and the file names inside those folders              (every stage)
  run       seed, device                                                (pretrain, evaluate)
  data      data                                                        (ingest)
  pretrain  model, augment, pretrain, and the schedule derived from them (pretrain)
  probe     knn, evaluate                                               (pretrain, evaluate)
  export    export                                                      (export)
  embed     embed                                                       (embed)
  checks    checks                                                      (no stage: the asset checks)

The whole file, with the checks that span sections, is validated by :mod:`byol_core.config`.
"""

from __future__ import annotations

import importlib

# params.yaml's top-level keys, in the file's order -> "module.Name" of the type that
# validates each. byol_core.config builds the whole file's model from this, and
# byol_core.stages.load imports the schema of each section a stage reads.
SECTIONS = {
    "seed": "run.Seed",
    "device": "run.Device",
    "paths": "paths.PathsConfig",
    "data": "data.DataConfig",
    "model": "pretrain.ModelConfig",
    "augment": "pretrain.AugmentConfig",
    "pretrain": "pretrain.PretrainConfig",
    "knn": "probe.KnnConfig",
    "evaluate": "probe.EvaluateConfig",
    "export": "export.ExportConfig",
    "embed": "embed.EmbedConfig",
    "checks": "checks.ChecksConfig",
}


def section(key: str) -> object:
    """The type that validates params.yaml's top-level ``key``, importing its module alone.

    ``key`` may be dotted (``"paths.models"``): its section's type is returned."""
    head = key.partition(".")[0]
    if head not in SECTIONS:
        raise KeyError(f"no params key {key!r}")
    module, _, name = SECTIONS[head].partition(".")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
