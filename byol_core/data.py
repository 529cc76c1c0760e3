"""Ingest: read a source dataset and write the prepared format every later stage reads.

Prepared format (one directory, written atomically):
  ``{split}_images.npy``  uint8, (N, C, H, W)
  ``{split}_labels.npy``  int64, (N,)
  ``manifest.parquet``    one row per image: index, split, label, content hash, source
  ``card.json``           shape, class names, per-channel mean/std (train split, [0, 1] scale),
                          split sizes and a hash of all arrays (``data_hash``)
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import struct
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from byol_core.config import DataConfig
from byol_core.errors import ByolError
from byol_core.storage import replace_dir, staging_dir

SPLITS = ("train", "test")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
_IDX_DTYPES = {0x08: np.uint8}


@dataclass(frozen=True)
class Prepared:
    """The prepared dataset in memory: uint8 images (N, C, H, W) and int64 labels per split."""

    images: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    card: dict


def read_idx(path: Path) -> np.ndarray:
    """Read a gzipped IDX file (the MNIST format) into an array, checking header and size."""
    try:
        with gzip.open(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as exc:
        raise ByolError(f"{path}: cannot read gzipped IDX data ({exc}). The file is truncated or "
                        "corrupt: delete it and fetch it again.") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ByolError(f"{path}: not an IDX file of unsigned bytes (bad magic number). "
                        "Point data.source_dir at the original Fashion-MNIST .gz files.")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ByolError(f"{path}: IDX header is cut short. The file is truncated: fetch it again.")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise ByolError(f"{path}: header promises {expected} bytes for shape {shape} but the file holds "
                        f"{len(raw) - header}. The file is truncated or corrupt: fetch it again.")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _missing_files(directory: Path) -> list[str]:
    return [name for pair in FASHION_MNIST_FILES.values() for name in pair if not (directory / name).is_file()]


def _download_fashion_mnist(target: Path) -> None:
    """torchvision's downloader, for machines with a network: the four .gz files land in
    ``target`` (moved there only once all four arrived)."""
    from torchvision.datasets import FashionMNIST

    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.download-", dir=target.parent))
    try:
        for train in (True, False):
            FashionMNIST(root=str(scratch), train=train, download=True)
        target.mkdir(exist_ok=True)
        for pair in FASHION_MNIST_FILES.values():
            for name in pair:
                os.replace(scratch / "FashionMNIST" / "raw" / name, target / name)
    except Exception as exc:  # no network, or the mirror is down
        raise ByolError(
            f"data.source_dir {target} holds no Fashion-MNIST files and downloading them failed "
            f"({type(exc).__name__}). `make setup` copies them from Debian's package "
            f"(apt-get install -y dataset-fashion-mnist puts them in {DEBIAN_FASHION_MNIST}/); "
            "or copy the four *-ubyte.gz files there yourself.") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def locate_fashion_mnist(cfg: DataConfig) -> Path:
    """``data.source_dir`` when it holds all four IDX files. When the folder is missing or
    empty, torchvision's downloader fills it; a folder with only some files is an error."""
    directory = cfg.source_dir
    missing = _missing_files(directory)
    if not missing:
        return directory
    if directory.is_dir() and any(directory.iterdir()):
        raise ByolError(f"data.source_dir {directory} lacks {', '.join(missing)}. "
                        "Put all four Fashion-MNIST IDX .gz files there.")
    _download_fashion_mnist(directory)
    return directory


def load_fashion_mnist(directory: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    images, labels = {}, {}
    for split, (image_file, label_file) in FASHION_MNIST_FILES.items():
        x = read_idx(directory / image_file)
        y = read_idx(directory / label_file)
        if x.ndim != 3 or y.ndim != 1:
            raise ByolError(f"{directory / image_file}: expected (N, H, W) images and (N,) labels, "
                            f"got {x.shape} and {y.shape}.")
        if len(x) != len(y):
            raise ByolError(f"{directory}: {split} has {len(x)} images but {len(y)} labels "
                            f"({image_file} vs {label_file}). Fetch matching files.")
        images[split] = x[:, None, :, :]
        labels[split] = y.astype(np.int64)
    return images, labels


def _row_hashes(images: np.ndarray) -> list[str]:
    flat = images.reshape(len(images), -1)
    return [hashlib.blake2b(row.tobytes(), digest_size=8).hexdigest() for row in flat]


def data_hash(images: dict[str, np.ndarray], labels: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for split in SPLITS:
        for array in (images[split], labels[split]):
            digest.update(str(array.shape).encode())
            digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


def build_card(images, labels, classes, source: str) -> dict:
    """The dataset card. It holds nothing about where the files were (no absolute paths),
    so the same data gives the same prepared folder, and the same DVC hash, anywhere."""
    train = images["train"].astype(np.float64) / 255.0
    channels, height, width = images["train"].shape[1:]
    return {
        "source": source,
        "channels": int(channels),
        "height": int(height),
        "width": int(width),
        "classes": list(classes),
        "splits": {split: int(len(labels[split])) for split in SPLITS},
        "mean": [float(v) for v in train.mean(axis=(0, 2, 3))],
        "std": [float(v) for v in train.std(axis=(0, 2, 3))],
        "data_hash": data_hash(images, labels),
    }


def build_manifest(images, labels, source: str) -> pd.DataFrame:
    frames = []
    for split in SPLITS:
        n = len(labels[split])
        frames.append(pd.DataFrame({
            "index": np.arange(n, dtype=np.int64),
            "split": split,
            "label": labels[split],
            "content_hash": _row_hashes(images[split]),
            "source": source,
        }))
    return pd.concat(frames, ignore_index=True)


def ingest(cfg: DataConfig, out_dir: Path) -> dict:
    """Read the configured source, cap it, and write the prepared directory. Returns the card."""
    started = time.perf_counter()
    source_dir = locate_fashion_mnist(cfg)
    images, labels = load_fashion_mnist(source_dir)
    for split, cap in (("train", cfg.max_train), ("test", cfg.max_test)):
        if cap is not None:
            images[split], labels[split] = images[split][:cap], labels[split][:cap]
    card = build_card(images, labels, FASHION_MNIST_CLASSES, cfg.source)
    manifest = build_manifest(images, labels, cfg.source)

    staging = staging_dir(out_dir)
    try:
        for split in SPLITS:
            np.save(staging / f"{split}_images.npy", images[split])
            np.save(staging / f"{split}_labels.npy", labels[split])
        manifest.to_parquet(staging / "manifest.parquet", index=False)
        (staging / "card.json").write_text(json.dumps(card, indent=2) + "\n")
        replace_dir(staging, out_dir, marker="card.json")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    card["seconds"] = time.perf_counter() - started
    return card


def load_prepared(directory: Path) -> Prepared:
    """Read what :func:`ingest` wrote; a missing piece is an error that says to run ingest."""
    directory = Path(directory)
    card_path = directory / "card.json"
    if not card_path.is_file():
        raise ByolError(f"no prepared dataset at {directory} (card.json missing). Run `byol ingest` first.")
    card = json.loads(card_path.read_text())
    images, labels = {}, {}
    for split in SPLITS:
        for kind, store in (("images", images), ("labels", labels)):
            path = directory / f"{split}_{kind}.npy"
            try:
                store[split] = np.load(path, allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise ByolError(f"{path}: cannot read ({exc}). Run `byol ingest` again.") from None
        if len(images[split]) != len(labels[split]):
            raise ByolError(f"{directory}: {split} images and labels differ in count. Run `byol ingest` again.")
    return Prepared(images=images, labels=labels, card=card)
