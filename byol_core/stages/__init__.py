"""The stage entry points: scan -> ingest -> pretrain -> evaluate -> export -> embed.

Each stage is a module with ``PARAMS`` (the params keys it reads: exactly what dvc.yaml
lists for it) and ``run(params) -> (one-line summary, metrics)``. :func:`run` hands a stage
only its declared keys, so reading anything else fails at once instead of silently making
DVC's params tracking wrong. Stage modules are imported on demand, so running one stage
imports only the code it needs (the ``byol_core`` files dvc.yaml lists as its deps).
The CLI and any orchestrator call :func:`run`; no stage knows who called it.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING

from byol_core import schema

if TYPE_CHECKING:
    from byol_core.schema.base import Params

StageResult = tuple[str, dict]

STAGES = {
    "scan": "list the source folder (path, size, digest per file), reading only new or changed files",
    "ingest": "read the source dataset and write the prepared arrays, manifest and card",
    "pretrain": "train the BYOL encoder on the prepared train split",
    "evaluate": "linear probe and kNN on frozen features, with baselines",
    "export": "export the encoder to ONNX and check parity with onnxruntime",
    "embed": "embed every prepared image with the ONNX encoder; near-duplicates and pictures",
}


def load(name: str) -> ModuleType:
    """Stage ``name``'s module, and with it the schema of each params section it reads:
    the schema turns params.yaml into the values the stage is handed, so it is part of the
    stage's code (dvc.yaml's deps), and the schema of any other section is not."""
    if name not in STAGES:
        raise KeyError(f"no stage {name!r}; stages: {', '.join(STAGES)}")
    stage = importlib.import_module(f"byol_core.stages.{name}")
    for key in stage.PARAMS:
        schema.section(key)
    return stage


def run(name: str, params: Params, **options) -> StageResult:
    """Run stage ``name`` on its declared keys of ``params``. ``options`` are its command-line
    switches (scan's ``force``): how it works, never what a correct run writes."""
    from byol_core.schema.base import restrict  # here: the CLI starts without pydantic and yaml

    stage = load(name)
    return stage.run(restrict(params, stage.PARAMS), **options)
