"""ingest: the source dataset -> the prepared folder every later stage reads."""

from __future__ import annotations

from byol_core import ingest
from byol_core.schema.base import Params

PARAMS = ("paths.prepared", "paths.cache", "data")


def run(params: Params) -> tuple[str, dict]:
    card = ingest.ingest(params.data, params.paths.prepared, params.paths.cache)
    splits = card["splits"]
    counts = " / ".join(f"{n} {split}" for split, n in splits.items())
    notes = [f"{card['duplicates']} exact duplicates"]
    if card["test_in_train"]:
        notes.append(f"{card['test_in_train']} test images also in train")
    if card["skipped"]:
        shown = "; ".join(f"{s['origin']} ({s['reason']})" for s in card["skipped_files"][:3])
        more = f"; and {card['skipped'] - 3} more" if card["skipped"] > 3 else ""
        notes.append(f"skipped {card['skipped']} files: {shown}{more} (listed in manifest.parquet)")
    line = (f"ingest: {card['source']} {counts}, "
            f"{card['channels']}x{card['height']}x{card['width']} -> {params.paths.prepared} "
            f"(data {card['data_hash']}, {card['seconds']:.1f}s; {', '.join(notes)})")
    metrics = {f"n_{split}": n for split, n in splits.items()}
    metrics.update(data_hash=card["data_hash"], duplicates=card["duplicates"],
                   test_in_train=card["test_in_train"], skipped=card["skipped"])
    return line, metrics
