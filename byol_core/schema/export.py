"""``export``: the ONNX export and its parity check against PyTorch, and the export stage's
params view."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_validator

from byol_core.schema.base import Float, Int, Only, PositiveInt, Section, View
from byol_core.schema.paths import PathsConfig


class ExportConfig(Section):
    opset: Annotated[Int, Field(ge=18, le=23)]
    atol: Annotated[Float, Field(gt=0.0)]
    rtol: Annotated[Float, Field(ge=0.0)]
    parity_images: PositiveInt
    max_batch: Annotated[Int, Field(ge=2, le=1 << 20)]  # upper bound of the ONNX batch axis

    @model_validator(mode="after")
    def _parity_within_bound(self) -> ExportConfig:
        if self.parity_images > self.max_batch:
            raise ValueError(f"parity_images ({self.parity_images}) exceeds max_batch ({self.max_batch}): "
                             "the parity check runs them as one batch")
        return self


class ExportParams(View):
    """What the export stage reads."""

    paths: Annotated[PathsConfig, Only("prepared", "models", "metrics")]
    export: ExportConfig
