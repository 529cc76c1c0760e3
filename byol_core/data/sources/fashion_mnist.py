"""Fashion-MNIST: the four gzipped IDX files (60k train / 10k test, 28x28 grey, 10 classes)."""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from byol_core.errors import ByolError
from byol_core.schema.data import DataConfig
from byol_core.data.sources.common import SourceData, ensure_local

CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
_IDX_DTYPES = {0x08: np.uint8}


MAX_IDX_BYTES = 1 << 34  # 16 GiB: far beyond any IDX data set; a header promising more is damaged


def read_idx(path: Path) -> np.ndarray:
    """Read a gzipped IDX file (the MNIST format) into an array. The header is checked
    before the data is read: every dimension at least 1 and their product within reason,
    so a damaged header can neither overflow nor make ingest read gigabytes."""
    try:
        with gzip.open(path, "rb") as handle:
            head = handle.read(4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in _IDX_DTYPES:
                raise ByolError(f"{path}: not an IDX file of unsigned bytes (bad magic number). "
                                "Point data.source_dir at the original Fashion-MNIST .gz files.")
            ndim = head[3]
            dims = handle.read(4 * ndim)
            if ndim == 0 or len(dims) < 4 * ndim:
                raise ByolError(f"{path}: IDX header is cut short. The file is truncated: fetch it again.")
            shape = struct.unpack(f">{ndim}I", dims)
            expected = math.prod(shape)
            if min(shape) < 1 or expected > MAX_IDX_BYTES:
                raise ByolError(f"{path}: IDX header gives the impossible shape {shape}. The file is corrupt: "
                                "fetch it again.")
            raw = handle.read(expected + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise ByolError(f"{path}: cannot read gzipped IDX data ({exc}). The file is truncated or "
                        "corrupt: delete it and fetch it again.") from None
    if len(raw) != expected:
        held = f"{len(raw)}" if len(raw) <= expected else "more"
        raise ByolError(f"{path}: header promises {expected} bytes for shape {shape} but the file holds "
                        f"{held}. The file is truncated or corrupt: fetch it again.")
    return np.frombuffer(raw, dtype=np.uint8).reshape(shape)


def _download(scratch: Path) -> None:
    from torchvision.datasets import FashionMNIST

    for train in (True, False):
        FashionMNIST(root=str(scratch), train=train, download=True)
    for pair in FILES.values():
        for name in pair:
            (scratch / "FashionMNIST" / "raw" / name).replace(scratch / name)


def locate(cfg: DataConfig) -> Path:
    """``data.source_dir`` when it holds all four IDX files; a missing or empty folder is
    filled by torchvision's downloader; a folder with only some files is an error."""
    return ensure_local(cfg.source_dir, [name for pair in FILES.values() for name in pair], "Fashion-MNIST",
                        _download, f"`make setup` copies them from Debian's package (apt-get install -y "
                        f"dataset-fashion-mnist puts them in {DEBIAN_DIR}/); or copy the four *-ubyte.gz "
                        "files there yourself.")


def read(cfg: DataConfig) -> SourceData:
    directory = locate(cfg)
    images, labels, origins = {}, {}, {}
    for split, (image_file, label_file) in FILES.items():
        x = read_idx(directory / image_file)
        y = read_idx(directory / label_file)
        if x.ndim != 3 or y.ndim != 1 or min(x.shape[1:]) < 8:
            raise ByolError(f"{directory / image_file}: expected (N, H, W) images of at least 8x8 px and (N,) "
                            f"labels, got {x.shape} and {y.shape}. Fetch the original files.")
        if len(x) != len(y):
            raise ByolError(f"{directory}: {split} has {len(x)} images but {len(y)} labels "
                            f"({image_file} vs {label_file}). Fetch matching files.")
        if len(y) and y.max() >= len(CLASSES):
            raise ByolError(f"{directory / label_file}: label {int(y.max())} is not one of Fashion-MNIST's "
                            f"{len(CLASSES)} classes. Fetch the original file.")
        cap = cfg.caps[split]  # None: all
        images[split] = x[:cap, None, :, :]
        labels[split] = y[:cap].astype(np.int64)
        origins[split] = [f"{image_file}#{i}" for i in range(len(labels[split]))]
    return SourceData(images, labels, origins, list(CLASSES))
