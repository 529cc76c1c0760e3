"""ingest: the source dataset -> the prepared folder every later stage reads."""

from __future__ import annotations

from byol_core import data
from byol_core.config import Params

PARAMS = ("paths.prepared", "data")


def run(params: Params) -> tuple[str, dict]:
    card = data.ingest(params.data, params.paths.prepared)
    splits = card["splits"]
    line = (f"ingest: {card['source']} {splits['train']} train / {splits['test']} test, "
            f"{card['channels']}x{card['height']}x{card['width']} -> {params.paths.prepared} "
            f"(data {card['data_hash']}, {card['seconds']:.1f}s)")
    return line, {"n_train": splits["train"], "n_test": splits["test"], "data_hash": card["data_hash"]}
