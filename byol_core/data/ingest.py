"""Ingest: read the configured source and write the prepared format (:mod:`byol_core.data.prepared`).

Every source goes through the same steps: read it (its reader keeps each split's first
``data.max_*`` images), convert it to ``data.channels`` / ``data.image_size``, add the
images of an ``unlabeled/`` folder inside ``data.source_dir`` (any depth, any format PIL
reads, converted to the labelled split's channels and size, up to ``data.max_unlabeled``),
count exact duplicates, and write shards, manifest and card at once.
Image files are converted through a cache (:mod:`byol_core.data.cache`), so a re-ingest converts
only new or changed files, and the output is the same as a from-scratch ingest's. Splits
are streamed into the shards, so memory holds a few thousand images at a time, not a split.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from byol_core import progress

from byol_core.data import sources
from byol_core.data.cache import ConversionCache
from byol_core.data.card import CARD_FILE, FORMAT, Card, Shard, SplitLayout, StoreLayout, write_card, write_layout
from byol_core.data.prepared import LABELLED, SPLITS, UNLABELED, data_hash, labels_name
from byol_core.errors import ByolError
from byol_core.data.filesplit import CHUNK_BYTES, CheckedPixels, Resolved, resolve
from byol_core.schema.data import DataConfig
from byol_core.data.sources import imagefolder
from byol_core.data.sources.common import FileSplit, SourceData, conform
from byol_core.io.storage import replace_dir, staging_dir
from byol_core.data.store import DIGEST_BYTES, ShardWriter

if TYPE_CHECKING:
    from byol_core.data.scan import FileIndex

# Every reader, whichever data.source names: all of them are ingest's code (its DVC deps).
READERS = {name: sources.reader(name) for name in sources.SOURCES}


def _add_unlabeled_folder(data: SourceData, cfg: DataConfig, index: FileIndex | None) -> None:
    folder = cfg.source_dir / sources.UNLABELED_FOLDER
    if not folder.is_dir():
        return
    if "unlabeled" in data.images:
        raise ByolError(f"{folder}: {cfg.source} has its own unlabeled split; move this folder out of "
                        "data.source_dir (it would be read as a second one).")
    files = imagefolder.sample_order(imagefolder.list_images(folder, cfg.source_dir, index=index))
    if not files:
        raise ByolError(f"{folder} holds no images. Add images for pretraining or remove the folder.")
    channels, size = _image_shape(data.images["train"])[:2]
    data.images["unlabeled"] = FileSplit(cfg.source_dir, files, channels, size, cfg.caps["unlabeled"])
    data.labels["unlabeled"] = np.full(len(files), UNLABELED, dtype=np.int64)
    data.origins["unlabeled"] = [f[0] for f in files]


def _image_shape(images: np.ndarray | FileSplit) -> tuple[int, int, int]:
    if isinstance(images, FileSplit):
        return images.channels, images.size, images.size
    return tuple(int(d) for d in images.shape[1:])


def read_source(cfg: DataConfig, index: FileIndex | None = None) -> SourceData:
    """The configured source, capped to ``data.max_*`` by its reader and converted to
    ``data.channels`` / ``data.image_size``, with its ``unlabeled/`` folder if any (image
    files are capped as they are converted). ``index``: the files a scan of
    ``data.source_dir`` just found, which the image-folder reader takes instead of walking."""
    reader = READERS[cfg.source]
    data = (reader.read(cfg, index) if reader is imagefolder else reader.read(cfg)).check(cfg.source_dir)
    conform(data, cfg.channels, cfg.image_size, f"{cfg.source} in {cfg.source_dir}")
    height, width = _image_shape(data.images["train"])[1:]
    if height != width:
        raise ByolError(f"{cfg.source} in {cfg.source_dir}: images are {height}x{width} px, not square, and every "
                        "later stage takes square images. Set data.image_size to resize and centre-crop them.")
    _add_unlabeled_folder(data, cfg, index)
    return data


@dataclass
class _Written:
    """One split as written: what the manifest and the card need."""

    origins: list[str]
    labels: np.ndarray
    writer: ShardWriter
    layout: dict


def _write_split(data: SourceData, split: str, cfg: DataConfig, out_dir: Path, cache_dir: Path, staging: Path,
                 caches: dict) -> _Written:
    images = data.images[split]
    shape = _image_shape(images)
    writer = ShardWriter(staging, split, shape, int(cfg.shard_mb * (1 << 20)))
    rows = max(1, CHUNK_BYTES // int(np.prod(shape)))
    if isinstance(images, FileSplit):
        if shape not in caches:
            caches[shape] = ConversionCache(cache_dir, shape[0], shape[1])
        cache = caches[shape]
        resolved = resolve(images, data.labels[split], cache, cfg.on_corrupt, split)
        data.skipped.extend(resolved.skipped)
        if not resolved.origins and split in LABELLED:
            first = resolved.skipped[0] if resolved.skipped else None
            raise ByolError(f"{cfg.source_dir}: the {split} split holds no usable images: all {len(resolved.skipped)} "
                            "were left out under data.on_corrupt: skip"
                            + (f" (first: {first['origin']}: {first['reason']})" if first else "")
                            + ". Fix or replace them.")
        _write_files(writer, resolved, cache, out_dir, rows, split)
        origins, labels = resolved.origins, resolved.labels
    else:
        origins, labels = data.origins[split], data.labels[split]
        if not len(images) and split in LABELLED:
            raise ByolError(f"data.source_dir {cfg.source_dir}: the {split} split is empty. Add images.")
        writer.write_all(origins, images, rows)
    np.save(staging / labels_name(split), np.ascontiguousarray(labels, dtype=np.int64))
    return _Written(origins, np.asarray(labels, dtype=np.int64), writer, writer.close())


def _write_files(writer: ShardWriter, resolved: Resolved, cache: ConversionCache, out_dir: Path, rows: int,
                 split: str) -> None:
    """The shards of an image-file split. A shard made of the same files (path, size and
    mtime) as one the last ingest wrote is hard-linked from the conversion cache, which keeps
    a link to every shard it published (:meth:`ConversionCache.remember_shard`), not rebuilt,
    so a re-ingest costs what changed: the shards the new files land in, even when the
    prepared folder was deleted first, as ``dvc repro`` does. The others are written from the
    cache's packs, every image checked against its digest on the way."""
    pixels = CheckedPixels(resolved, cache, split)
    try:
        for start, stop in writer.plan(resolved.origins):
            fingerprint = resolved.fingerprint(start, stop)
            earlier = cache.shard(fingerprint)
            if earlier is not None:
                path, shard = earlier
                staged = writer.link(path, shard)
            else:
                staged, shard = writer.write((pixels.take(i, min(i + rows, stop)) for i in range(start, stop, rows)),
                                             count=stop - start)
            cache.remember_shard(fingerprint, out_dir, staged, shard)
    finally:
        pixels.close()


def build_manifest(written: dict[str, _Written], skipped: list[dict]) -> pd.DataFrame:
    """One row per prepared image, then one per skipped file. ``duplicate`` marks an image
    whose pixels equal an earlier row's (in train, test, unlabeled order)."""
    frames, heads = [], []
    for split, w in written.items():
        n = len(w.labels)
        head = np.ascontiguousarray(w.writer.digest_rows()[:, :8])  # what content_hash shows
        heads.append(head.view(np.uint64).reshape(-1))
        shown = head.tobytes().hex()
        frames.append(pd.DataFrame({
            "index": np.arange(n, dtype=np.int64),
            "split": split,
            "label": w.labels,
            "content_hash": [shown[i:i + 16] for i in range(0, len(shown), 16)],
            "source": w.origins,
            "status": "ok",
        }))
    manifest = pd.concat(frames, ignore_index=True)
    manifest.insert(5, "duplicate", _repeated(np.concatenate(heads)))
    if skipped:
        left_out = pd.DataFrame({
            "index": -1, "split": [s["split"] for s in skipped], "label": UNLABELED, "content_hash": "",
            "source": [s["origin"] for s in skipped], "duplicate": False,
            "status": [f"skipped: {s['reason']}" for s in skipped]})
        manifest = pd.concat([manifest, left_out], ignore_index=True)
    return manifest


def _repeated(keys: np.ndarray) -> np.ndarray:
    """Whether each key equals an earlier one (pandas' ``duplicated``, as one sort)."""
    repeated = np.ones(len(keys), dtype=bool)
    repeated[np.unique(keys, return_index=True)[1]] = False
    return repeated


def _channel_stats(writer: ShardWriter, pixels_per_image: int) -> tuple[list[float], list[float]]:
    """Per-channel mean and std on the [0, 1] scale, from exact integer sums."""
    n = writer.count * pixels_per_image
    means, stds = [], []
    for total, squares in zip(writer.pixel_sum.tolist(), writer.pixel_sq_sum.tolist()):
        means.append(total / (n * 255))
        stds.append(math.sqrt(float(Fraction(squares * n - total * total, n * n * 255 * 255))))
    return means, stds


def build_card(written: dict[str, _Written], manifest: pd.DataFrame, source: str, classes: list[str],
               skipped: int) -> Card:
    """The dataset card. It holds nothing about where the files were (no absolute paths),
    so the same data gives the same prepared folder, and the same DVC hash, anywhere."""
    train = written["train"].writer
    channels, height, width = train.image_shape
    mean, std = _channel_stats(train, height * width)
    kept = manifest[manifest.status == "ok"]
    whole = np.dtype(f"S{DIGEST_BYTES}")  # a digest as one value (all DIGEST_BYTES bytes compared)
    test_in_train = np.isin(written["test"].writer.digest_rows().copy().view(whole).reshape(-1),
                            written["train"].writer.digest_rows().copy().view(whole).reshape(-1)).sum()
    return Card(
        source=source,
        channels=int(channels),
        height=int(height),
        width=int(width),
        classes=tuple(classes),
        splits={split: len(w.labels) for split, w in written.items()},
        mean=tuple(mean),
        std=tuple(std),
        duplicates=int(kept.duplicate.sum()),
        test_in_train=int(test_in_train),
        skipped=skipped,
        data_hash=data_hash({split: ((len(w.labels), *w.writer.image_shape), w.labels, bytes(w.writer.digests))
                             for split, w in written.items()}),
    )


def build_layout(written: dict[str, _Written]) -> StoreLayout:
    """Where each split's shards are, and how many images each holds."""
    return StoreLayout(format=FORMAT, image_shape=tuple(written["train"].writer.image_shape),
                       splits={split: SplitLayout(w.layout["count"], tuple(Shard(s["file"], s["count"])
                                                                            for s in w.layout["shards"]))
                               for split, w in written.items()})


@dataclass(frozen=True)
class Ingested:
    """What one ingest did: the card it wrote, how long it took, the files it left out."""

    card: Card
    seconds: float
    skipped_files: list[dict]  # {"split", "origin", "reason"} per file left out


def ingest(cfg: DataConfig, out_dir: Path, cache_dir: Path, index: FileIndex | None = None) -> Ingested:
    """Read the configured source and write the prepared directory (converting only the
    image files ``cache_dir`` does not hold yet; ``index``: see :func:`read_source`)."""
    started = time.perf_counter()
    data = read_source(cfg, index)
    staging = staging_dir(out_dir)
    caches: dict = {}
    try:
        written = {split: _write_split(data, split, cfg, out_dir, cache_dir, staging, caches)
                   for split in SPLITS if split in data.images}
        manifest = build_manifest(written, data.skipped)
        card = build_card(written, manifest, cfg.source, data.classes, len(data.skipped))
        write_layout(staging, build_layout(written))
        manifest.to_parquet(staging / "manifest.parquet", index=False)
        write_card(staging, card)
        replace_dir(staging, out_dir, marker=CARD_FILE)
        for cache in caches.values():
            cache.forget_shards(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        for cache in caches.values():
            cache.close()
            n = cache.reconverted
            if n:  # said whether or not the ingest then succeeds: those entries are repaired either way
                progress.report(f"ingest: {n} damaged {'entry' if n == 1 else 'entries'} in {cache.folder} "
                                f"{'was' if n == 1 else 'were'} converted again")
    return Ingested(card, time.perf_counter() - started, data.skipped)
