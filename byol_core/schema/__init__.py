"""The schema of params.yaml, one module per group of sections.

DVC reruns a stage when a file it imports changes. So a stage imports the schema of the
sections it reads and no other: an edit to the export section's schema reruns export
alone, and one to ``checks`` (read by no stage) reruns nothing. Each stage's params view
(a :class:`~byol_core.schema.base.View`: the keys it reads) lives beside the schema of the
sections that stage alone reads, and imports the schema of the others. The groups follow
who reads them:

  base      what every section shares: the frozen model, anchored paths, reading the
            YAML file, :class:`~byol_core.schema.base.View`             (every stage)
  paths     paths, and the file names inside those folders              (every stage)
  run       seed, device                                                (pretrain, evaluate)
  data      data; the views ScanParams, IngestParams                    (scan, ingest)
  pretrain  model, augment, pretrain, and the schedule derived from them;
            the view PretrainParams                                     (pretrain)
  probe     knn, evaluate; the view EvaluateParams                      (pretrain, evaluate)
  export    export; the view ExportParams                               (export)
  embed     embed; the view EmbedParams                                 (embed)
  checks    checks                                                      (no stage: the asset checks)

The whole file, with the checks that span sections, is validated by :mod:`byol_core.config`.
"""

from __future__ import annotations

import importlib

# params.yaml's top-level keys, in the file's order -> "module.Name" of the type that
# validates each. byol_core.config builds the whole file's model from this; a stage's view
# names its keys (and imports their types) itself.
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
