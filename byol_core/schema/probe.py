"""``knn`` and ``evaluate``: how frozen features are judged. The evaluate stage reads both
(its params view is :class:`EvaluateParams`); pretrain reads them too, for its per-epoch
kNN monitor (and evaluate.batch_size)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from byol_core.schema.base import Float, Only, PositiveInt, Section, View
from byol_core.schema.paths import PathsConfig
from byol_core.schema.run import Device, Seed


class KnnConfig(Section):
    k: PositiveInt
    temperature: Annotated[Float, Field(gt=0.0)]


class EvaluateConfig(Section):
    val_fraction: Annotated[Float, Field(gt=0.0, le=0.5)]  # carved from train to choose weight decay
    weight_decays: Annotated[tuple[Annotated[Float, Field(ge=0.0)], ...], Field(min_length=1)]
    max_iter: PositiveInt  # L-BFGS iteration budget per probe fit
    tolerance: Annotated[Float, Field(gt=0.0)]  # converged when max |gradient| of the probe loss is below this
    batch_size: PositiveInt  # feature-extraction batch
    probe_max_mb: Annotated[Float, Field(gt=0.0)]  # features one probe holds; larger splits: an even subset
    label_fractions: tuple[Annotated[Float, Field(gt=0.0, lt=1.0)], ...]  # shares of train labels probed too


class EvaluateParams(View):
    """What the evaluate stage reads."""

    seed: Seed
    device: Device
    paths: Annotated[PathsConfig, Only("prepared", "models", "metrics")]
    knn: KnnConfig
    evaluate: EvaluateConfig
