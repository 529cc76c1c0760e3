"""``embed``: embedding every prepared image with the ONNX encoder, and searching them (the
embed stage)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from byol_core.schema.base import Float, Int, PositiveInt, Section


class EmbedConfig(Section):
    batch_size: PositiveInt  # images per onnxruntime call
    near_duplicate: Annotated[Float, Field(gt=0.0, le=1.0)]  # cosine similarity from which two images count
    neighbours: Annotated[Int, Field(ge=1, le=64)]  # training neighbours per query in the picture
    approximate_from: PositiveInt  # gallery rows from which an approximate index is built and searched
    approximate_recall: Annotated[Float, Field(gt=0.0, le=1.0)]  # its recall@10 against exact search, at least
