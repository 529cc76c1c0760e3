"""scan: the source folder -> its listing (path, size, digest per file), the record DVC tracks.

Reads only new or changed files (see byol_core.data.scan); under DVC the stage runs on every
`dvc repro` (always_changed), and ingest reruns only when the listing's bytes changed.
"""

from __future__ import annotations

from byol_core.data import scan
from byol_core.schema.data import ScanParams

VIEW = ScanParams  # the params keys this stage reads (dvc.yaml's params: list)


def run(params: ScanParams, force: bool = False) -> tuple[str, dict]:
    """``force``: read every file again, not only those whose size or mtime changed."""
    folder, listing_path, cache = params.data.source_dir, params.paths.listing, params.paths.cache
    listing = scan.scan(folder, cache, force=force)
    listing.write(listing_path)
    line = (f"scan: {folder}: {listing.files} files, {listing.bytes / 2**20:.1f} MiB; read {listing.read}, "
            f"{listing.files - listing.read} known -> {listing_path} (md5 {listing.md5}, {listing.seconds:.1f}s)")
    return line, {"files": listing.files, "bytes": listing.bytes, "read": listing.read, "md5": listing.md5}
