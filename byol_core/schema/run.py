"""``seed`` and ``device``: the two top-level values, read by pretrain and evaluate."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, Field

from byol_core.schema.base import Int


def _device(value: str) -> str:
    if value in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:[0-9]{1,3}", value):
        return value
    raise ValueError(f"must be auto, cpu, cuda or cuda:N, got {value!r}")


Seed = Annotated[Int, Field(ge=0, le=2**32 - 1)]
Device = Annotated[str, AfterValidator(_device)]  # auto | cpu | cuda | cuda:N
