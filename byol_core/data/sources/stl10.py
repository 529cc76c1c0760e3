"""STL-10 in its binary layout: 5,000 labelled train, 8,000 test and 100,000 unlabeled
images, 3x96x96, in ten classes.

``data.source_dir`` is the torchvision root: it holds ``stl10_binary/``. Each ``*_X.bin`` is
raw uint8 images, 27,648 bytes each, every channel stored column-major (as MATLAB wrote
them), so an image is read as (3, 96, 96) and its last two axes swapped, as torchvision
does. ``*_y.bin`` is one byte per image, classes numbered 1..10. The unlabeled file is
2.7 GB, so a split is read only as far as its cap (``data.max_*``) reaches.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from byol_core.data.prepared import UNLABELED
from byol_core.errors import ByolError
from byol_core.schema.data import DataConfig
from byol_core.data.sources.common import SourceData, ensure_local

FOLDER = "stl10_binary"
SIDE = 96
IMAGE_BYTES = 3 * SIDE * SIDE
FILES = {  # split -> (images, labels or None)
    "train": ("train_X.bin", "train_y.bin"),
    "test": ("test_X.bin", "test_y.bin"),
    "unlabeled": ("unlabeled_X.bin", None),
}
CLASS_NAMES = "class_names.txt"
REQUIRED = [f"{FOLDER}/{name}" for pair in FILES.values() for name in pair if name] + [f"{FOLDER}/{CLASS_NAMES}"]
MAX_IMAGES = 1_000_000  # per file; the official files hold 5000, 8000 and 100000


def image_count(path: Path) -> int:
    """How many images ``path`` holds, from its size (a partial image means a cut-short file)."""
    size = path.stat().st_size
    if size % IMAGE_BYTES:
        raise ByolError(f"{path}: {size} bytes is not a whole number of {IMAGE_BYTES}-byte 3x{SIDE}x{SIDE} "
                        "images. The file is truncated or corrupt: fetch it again.")
    if size == 0:
        raise ByolError(f"{path}: the file is empty. Fetch it again.")
    if size // IMAGE_BYTES > MAX_IMAGES:
        raise ByolError(f"{path}: {size} bytes would be {size // IMAGE_BYTES} images, far more than STL-10 holds "
                        f"(at most {MAX_IMAGES}). The file is damaged: fetch it again.")
    return size // IMAGE_BYTES


def read_images(path: Path, count: int) -> np.ndarray:
    """The first ``count`` images of ``path`` as uint8 (N, 3, 96, 96), row-major: a view of
    the memory-mapped file (the column-major axes swapped), so nothing is read until ingest
    copies it into shards, a chunk at a time."""
    return np.memmap(path, dtype=np.uint8, mode="r", shape=(count, 3, SIDE, SIDE)).transpose(0, 1, 3, 2)


def read_labels(path: Path, expected: int, images: Path, classes: int) -> np.ndarray:
    """Labels 1..``classes`` in ``path`` as int64 0..``classes - 1``, one per image."""
    raw = np.fromfile(path, dtype=np.uint8)
    if len(raw) != expected:
        raise ByolError(f"{path}: {len(raw)} labels for the {expected} images in {images.name}. "
                        "Fetch matching files.")
    bad = (raw < 1) | (raw > classes)
    if bad.any():
        raise ByolError(f"{path}: label {int(raw[bad][0])} at index {int(np.argmax(bad))} is outside 1..{classes} "
                        f"({classes} classes in {CLASS_NAMES}). The file is corrupt: fetch it again.")
    return raw.astype(np.int64) - 1


def read_classes(path: Path) -> list[str]:
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise ByolError(f"{path}: cannot be read ({exc}). Fetch it again.") from None
    if not names:
        raise ByolError(f"{path}: lists no class names. Fetch it again.")
    return names


def _download(scratch: Path) -> None:
    from torchvision.datasets import STL10

    STL10(root=str(scratch), split="train", download=True)  # fetches and unpacks every split


def read(cfg: DataConfig) -> SourceData:
    root = cfg.source_dir
    if (root / FILES["train"][0]).is_file():
        raise ByolError(f"data.source_dir {root} holds the STL-10 files themselves; it should hold the "
                        f"folder {FOLDER}/ that contains them. Point data.source_dir at its parent folder.")
    how = (f"Unpack the official stl10_binary.tar.gz into {root} (it makes {FOLDER}/), "
           "or leave the folder empty or missing to download it (needs a network).")
    ensure_local(root, REQUIRED, "STL-10", _download, how)
    folder = root / FOLDER
    classes = read_classes(folder / CLASS_NAMES)
    images, labels, origins = {}, {}, {}
    for split, (image_file, label_file) in FILES.items():
        total = image_count(folder / image_file)
        if label_file is None:
            y = np.full(total, UNLABELED, dtype=np.int64)
        else:
            y = read_labels(folder / label_file, total, folder / image_file, len(classes))
        count = total if cfg.caps[split] is None else min(total, cfg.caps[split])
        images[split] = read_images(folder / image_file, count)
        labels[split] = y[:count]
        origins[split] = [f"{FOLDER}/{image_file}#{i}" for i in range(count)]
    return SourceData(images=images, labels=labels, origins=origins, classes=classes).check(folder)
