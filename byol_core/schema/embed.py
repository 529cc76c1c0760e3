"""``embed``: embedding every prepared image with the ONNX encoder, and searching them, and
the embed stage's params view."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from byol_core.schema.base import Float, Int, Only, PositiveInt, Section, View
from byol_core.schema.paths import PathsConfig


class EmbedConfig(Section):
    batch_size: PositiveInt  # images per onnxruntime call
    near_duplicate: Annotated[Float, Field(gt=0.0, le=1.0)]  # cosine similarity from which two images count
    neighbours: Annotated[Int, Field(ge=1, le=64)]  # training neighbours per query in the picture
    approximate_from: PositiveInt  # gallery rows from which an approximate index is built and searched
    approximate_recall: Annotated[Float, Field(gt=0.0, le=1.0)]  # its recall@10 against exact search, at least


class EmbedParams(View):
    """What the embed stage reads."""

    paths: Annotated[PathsConfig, Only("prepared", "models", "metrics", "embeddings")]
    embed: EmbedConfig
