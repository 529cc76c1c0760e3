"""``checks``: thresholds of the asset checks an orchestrator runs on the outputs. No stage
reads them, so no stage imports this module and an edit here reruns nothing."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from byol_core.schema.base import Float, PositiveInt, Section


class ChecksConfig(Section):
    """Thresholds of the asset checks an orchestrator runs on the outputs (no stage reads them)."""

    min_feature_spread: Annotated[Float, Field(gt=0.0)]  # collapse: spread of the encoder's features
    min_probe_margin: Float  # linear probe top-1 minus the random-init probe's, at least this
    images: PositiveInt  # test images the collapse and parity checks run through the encoder
