"""ingest: the source dataset -> the prepared folder every later stage reads.

Its declared input is the source listing (paths.listing, written by the scan stage): when
there is one, ingest first checks that data.source_dir is still what it says, and refuses
to go on, naming what changed, when it is not. For an image folder the scan's record
usually proves that without a walk (:func:`byol_core.data.scan.unchanged_index`: no folder's
mtime moved since the scan that wrote this listing). A change while ingest reads is not
seen here; the next scan sees it, so the next `dvc repro` reruns ingest.
"""

from __future__ import annotations

import contextlib
import gc

from byol_core.data import ingest, scan
from byol_core.schema.data import IngestParams

VIEW = IngestParams  # the params keys this stage reads (dvc.yaml's params: list)


@contextlib.contextmanager
def _no_cycle_collection():
    """Python's cycle collector off while ingest holds a few objects per listed file: each
    full collection walks all of them (at a million files, a third of a re-ingest's time went
    there), and they hold no cycles; reference counting frees them as before."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def run(params: IngestParams) -> tuple[str, dict]:
    listing, index = params.paths.listing, None
    with _no_cycle_collection():
        if listing.is_file():  # without one (byol ingest alone, never scanned) there is nothing to hold it to
            if params.data.source == "imagefolder":  # files are converted through the cache, checked as listed
                index = scan.unchanged_index(listing, params.data.source_dir, params.paths.cache)
            if index is None:  # the check's walk is the reader's too: one walk of the folder, not two
                index = scan.check(listing, params.data.source_dir, params.paths.cache).file_index()
        done = ingest.ingest(params.data, params.paths.prepared, params.paths.cache, index)
    card = done.card
    counts = " / ".join(f"{n} {split}" for split, n in card.splits.items())
    notes = [f"{card.duplicates} exact duplicates"]
    if card.test_in_train:
        notes.append(f"{card.test_in_train} test images also in train")
    if card.skipped:
        shown = "; ".join(f"{s['origin']} ({s['reason']})" for s in done.skipped_files[:3])
        more = f"; and {card.skipped - 3} more" if card.skipped > 3 else ""
        notes.append(f"skipped {card.skipped} files: {shown}{more} (listed in manifest.parquet)")
    line = (f"ingest: {card.source} {counts}, {card.channels}x{card.height}x{card.width} -> {params.paths.prepared} "
            f"(data {card.data_hash}, {done.seconds:.1f}s; {', '.join(notes)})")
    metrics = {f"n_{split}": n for split, n in card.splits.items()}
    metrics.update(data_hash=card.data_hash, duplicates=card.duplicates, test_in_train=card.test_in_train,
                   skipped=card.skipped)
    return line, metrics
