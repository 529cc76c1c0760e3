"""The stage entry points: scan -> ingest -> pretrain -> evaluate -> export -> embed.

Each stage is a module with ``VIEW`` (the class declaring the params keys it reads,
:class:`byol_core.schema.base.View`: dvc.yaml's ``params:`` list for it is written from that
class) and ``run(params) -> (one-line summary, metrics)``. :func:`run` hands a stage only its
view of the params, so reading anything else fails at once instead of silently making DVC's
params tracking wrong. Stage modules are imported on demand, so running one stage imports
only the code it needs (the ``byol_core`` files dvc.yaml lists as its deps).
The CLI and any orchestrator call :func:`run`; no stage knows who called it.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING

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
    """Stage ``name``'s module, and with it (through its ``VIEW``) the schema of each params
    section it reads: the schema turns params.yaml into the values the stage is handed, so it
    is part of the stage's code (dvc.yaml's deps), and the schema of any other section is not."""
    if name not in STAGES:
        raise KeyError(f"no stage {name!r}; stages: {', '.join(STAGES)}")
    return importlib.import_module(f"byol_core.stages.{name}")


def run(name: str, params: Params, **options) -> StageResult:
    """Run stage ``name`` on its view of ``params`` (the whole file). ``options`` are its
    command-line switches (scan's ``force``): how it works, never what a correct run writes."""
    stage = load(name)
    return stage.run(stage.VIEW.of(params), **options)
