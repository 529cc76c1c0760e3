"""Ingest: read the configured source and write the prepared format (:mod:`byol_core.data`).

Every source goes through the same steps: read it, convert it to ``data.channels`` /
``data.image_size``, add the images of an ``unlabeled/`` folder inside ``data.source_dir``
(any depth, any format PIL reads, converted to the labelled split's channels and size),
cap each split, count exact duplicates, and write arrays, manifest and card at once.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

from byol_core.config import DataConfig
from byol_core.data import LABELLED, SPLITS, UNLABELED, data_hash
from byol_core.errors import ByolError
from byol_core.sources import SourceData, cifar10, cifar100, conform, fashion_mnist, imagefolder, stl10
from byol_core.storage import replace_dir, staging_dir

UNLABELED_FOLDER = "unlabeled"
SOURCES = {module.NAME: module for module in (fashion_mnist, cifar10, cifar100, stl10, imagefolder)}


def _add_unlabeled_folder(data: SourceData, cfg: DataConfig) -> None:
    folder = cfg.source_dir / UNLABELED_FOLDER
    if not folder.is_dir():
        return
    if "unlabeled" in data.images:
        raise ByolError(f"{folder}: {cfg.source} has its own unlabeled split; move this folder out of "
                        "data.source_dir (it would be read as a second one).")
    files = imagefolder.sample_order(imagefolder.list_images(folder), cfg.source_dir)
    if not files:
        raise ByolError(f"{folder} holds no images. Add images for pretraining or remove the folder.")
    _, channels, size, _ = data.images["train"].shape
    images, origins, skipped = imagefolder.convert_capped(files, cfg.source_dir, channels, size, cfg.on_corrupt,
                                                          "unlabeled", cfg.max_unlabeled)
    data.images["unlabeled"] = images
    data.labels["unlabeled"] = np.full(len(images), UNLABELED, dtype=np.int64)
    data.origins["unlabeled"] = origins
    data.skipped.extend(skipped)


def read_source(cfg: DataConfig) -> SourceData:
    """The configured source, converted to ``data.channels`` / ``data.image_size``, with its
    ``unlabeled/`` folder if any, and capped to ``data.max_*``."""
    data = SOURCES[cfg.source].read(cfg).check(cfg.source_dir)
    conform(data, cfg.channels, cfg.image_size, f"{cfg.source} in {cfg.source_dir}")
    _add_unlabeled_folder(data, cfg)
    for split, cap in (("train", cfg.max_train), ("test", cfg.max_test), ("unlabeled", cfg.max_unlabeled)):
        if cap is not None and split in data.images:
            data.images[split], data.labels[split] = data.images[split][:cap], data.labels[split][:cap]
            data.origins[split] = data.origins[split][:cap]
    for split in LABELLED:
        if len(data.images[split]) == 0:
            raise ByolError(f"data.source_dir {cfg.source_dir}: the {split} split is empty. "
                            "Add images, or check data.on_corrupt did not skip them all.")
    return data


def _row_hashes(images: np.ndarray) -> list[str]:
    flat = images.reshape(len(images), -1)
    return [hashlib.blake2b(row.tobytes(), digest_size=8).hexdigest() for row in flat]


def build_manifest(data: SourceData) -> pd.DataFrame:
    """One row per prepared image, then one per skipped file. ``duplicate`` marks an image
    whose pixels equal an earlier row's (in train, test, unlabeled order)."""
    frames = []
    for split in SPLITS:
        if split not in data.images:
            continue
        n = len(data.labels[split])
        frames.append(pd.DataFrame({
            "index": np.arange(n, dtype=np.int64),
            "split": split,
            "label": data.labels[split],
            "content_hash": _row_hashes(data.images[split]),
            "source": data.origins[split],
            "status": "ok",
        }))
    manifest = pd.concat(frames, ignore_index=True)
    manifest.insert(5, "duplicate", manifest.content_hash.duplicated())
    if data.skipped:
        skipped = pd.DataFrame({
            "index": -1, "split": [s["split"] for s in data.skipped], "label": UNLABELED, "content_hash": "",
            "source": [s["origin"] for s in data.skipped], "duplicate": False,
            "status": [f"skipped: {s['reason']}" for s in data.skipped]})
        manifest = pd.concat([manifest, skipped], ignore_index=True)
    return manifest


def build_card(data: SourceData, manifest: pd.DataFrame, source: str) -> dict:
    """The dataset card. It holds nothing about where the files were (no absolute paths),
    so the same data gives the same prepared folder, and the same DVC hash, anywhere."""
    images = data.images
    train = images["train"].astype(np.float64) / 255.0
    channels, height, width = images["train"].shape[1:]
    kept = manifest[manifest.status == "ok"]
    train_hashes = set(kept.content_hash[kept.split == "train"])
    return {
        "source": source,
        "channels": int(channels),
        "height": int(height),
        "width": int(width),
        "classes": list(data.classes),
        "splits": {split: int(len(data.labels[split])) for split in SPLITS if split in images},
        "mean": [float(v) for v in train.mean(axis=(0, 2, 3))],
        "std": [float(v) for v in train.std(axis=(0, 2, 3))],
        "duplicates": int(kept.duplicate.sum()),
        "test_in_train": int(kept.content_hash[kept.split == "test"].isin(train_hashes).sum()),
        "skipped": len(data.skipped),
        "data_hash": data_hash(images, data.labels),
    }


def ingest(cfg: DataConfig, out_dir: Path) -> dict:
    """Read the configured source and write the prepared directory. Returns the card."""
    started = time.perf_counter()
    data = read_source(cfg)
    manifest = build_manifest(data)
    card = build_card(data, manifest, cfg.source)

    staging = staging_dir(out_dir)
    try:
        for split, images in data.images.items():
            np.save(staging / f"{split}_images.npy", images)
            np.save(staging / f"{split}_labels.npy", data.labels[split])
        manifest.to_parquet(staging / "manifest.parquet", index=False)
        (staging / "card.json").write_text(json.dumps(card, indent=2) + "\n")
        replace_dir(staging, out_dir, marker="card.json")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    card["seconds"] = time.perf_counter() - started
    card["skipped_files"] = data.skipped
    return card


