"""Tiny files in each source's official format, for tests.

Each ``make_*`` writes into a directory (the ``data.source_dir``) and returns what it wrote,
so a test can compare what a source reads pixel for pixel.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _images(rng: np.random.Generator, n: int, side: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, 3, side, side), dtype=np.uint8)


def _pickle(path: Path, entry: dict, protocol: int, byte_keys: bool) -> None:
    if byte_keys:  # as Python 2 wrote them
        entry = {key.encode(): value for key, value in entry.items()}
    path.write_bytes(pickle.dumps(entry, protocol=protocol))


def make_cifar10(directory: Path, per_batch: int = 3, test: int = 4, seed: int = 0) -> dict:
    """``cifar-10-batches-py/`` with five train batches of ``per_batch`` images, pickled with
    protocol 2 and bytes keys, like the Python 2 originals. Returns {"images", "labels"}
    (split -> array, images (N, 3, 32, 32)) and "classes"."""
    rng = np.random.default_rng(seed)
    folder = Path(directory) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    images, labels = {"train": [], "test": []}, {"train": [], "test": []}
    batches = [(f"data_batch_{i}", "train", per_batch) for i in range(1, 6)] + [("test_batch", "test", test)]
    for name, split, n in batches:
        x, y = _images(rng, n, 32), rng.integers(0, 10, size=n)
        _pickle(folder / name, {"batch_label": name.encode(), "labels": [int(v) for v in y],
                                "data": x.reshape(n, -1), "filenames": [f"{name}_{i}.png".encode() for i in range(n)]},
                protocol=2, byte_keys=True)
        images[split].append(x)
        labels[split].append(y)
    _pickle(folder / "batches.meta", {"label_names": [c.encode() for c in CIFAR10_CLASSES],
                                      "num_cases_per_batch": per_batch, "num_vis": 3072}, protocol=2, byte_keys=True)
    return {"images": {s: np.concatenate(v) for s, v in images.items()},
            "labels": {s: np.concatenate(v).astype(np.int64) for s, v in labels.items()}, "classes": CIFAR10_CLASSES}


def make_cifar100(directory: Path, train: int = 6, test: int = 4, seed: int = 0) -> dict:
    """``cifar-100-python/`` (train, test, meta), pickled with protocol 4 and str keys, fine
    labels 0..99 and coarse labels that differ from them. Returns as :func:`make_cifar10`."""
    rng = np.random.default_rng(seed)
    folder = Path(directory) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    classes = [f"fine{i:02d}" for i in range(100)]
    images, labels = {}, {}
    for split, n in (("train", train), ("test", test)):
        x, y = _images(rng, n, 32), rng.integers(0, 100, size=n)
        _pickle(folder / split, {"filenames": [f"{i}.png" for i in range(n)], "batch_label": split,
                                 "fine_labels": [int(v) for v in y], "coarse_labels": [int(v) // 5 + 1 for v in y],
                                 "data": x.reshape(n, -1)}, protocol=4, byte_keys=False)
        images[split], labels[split] = x, y.astype(np.int64)
    _pickle(folder / "meta", {"fine_label_names": classes, "coarse_label_names": [f"coarse{i}" for i in range(20)]},
            protocol=4, byte_keys=False)
    return {"images": images, "labels": labels, "classes": classes}


def make_stl10(directory: Path, train: int = 3, test: int = 2, unlabeled: int = 4, seed: int = 0) -> dict:
    """``stl10_binary/`` with images stored channel by channel in column-major order, labels
    1..10. Returns {"images", "labels"} (split -> array, images (N, 3, 96, 96) as seen, labels
    0..9, -1 for unlabeled) and "classes"."""
    rng = np.random.default_rng(seed)
    folder = Path(directory) / "stl10_binary"
    folder.mkdir(parents=True, exist_ok=True)
    classes = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
    (folder / "class_names.txt").write_text("\n".join(classes) + "\n")
    images, labels = {}, {}
    for split, n in (("train", train), ("test", test), ("unlabeled", unlabeled)):
        x = _images(rng, n, 96)
        (folder / f"{split}_X.bin").write_bytes(np.ascontiguousarray(x.transpose(0, 1, 3, 2)).tobytes())
        images[split] = x
        if split == "unlabeled":
            labels[split] = np.full(n, -1, dtype=np.int64)
        else:
            y = rng.integers(0, 10, size=n)
            (folder / f"{split}_y.bin").write_bytes((y + 1).astype(np.uint8).tobytes())
            labels[split] = y.astype(np.int64)
    return {"images": images, "labels": labels, "classes": classes}


def image_of(kind: str, width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """A random image of one PIL mode: "RGB", "L", "RGBA", "P" (index 0 transparent) or
    "I;16" (16-bit grey)."""
    if kind == "RGB":
        return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")
    if kind == "L":
        return Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8), "L")
    if kind == "RGBA":
        return Image.fromarray(rng.integers(0, 256, (height, width, 4), dtype=np.uint8), "RGBA")
    if kind == "P":
        image = Image.fromarray(rng.integers(0, 16, (height, width), dtype=np.uint8), "P")
        image.putpalette(rng.integers(0, 256, 16 * 3, dtype=np.uint8).tolist())
        image.info["transparency"] = 0
        return image
    if kind == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (height, width), dtype=np.uint16))
    raise ValueError(kind)


# (mode, file suffix, width, height): every image's short side is at least 40 px.
KINDS = [("RGB", ".png", 40, 52), ("L", ".jpg", 60, 40), ("RGBA", ".png", 44, 44),
         ("P", ".png", 40, 41), ("I;16", ".png", 48, 40), ("RGB", ".jpeg", 70, 45)]


def make_imagefolder(directory: Path, classes: tuple[str, ...] = ("cat", "dog"), per_class: int = 6,
                     seed: int = 0, prefix: str = "", start: int = 0) -> dict[str, str]:
    """``per_class`` PNG and JPEG files per class folder (under ``prefix``, e.g. "train/"),
    cycling through :data:`KINDS`; every third one sits in a subfolder. Returns each file's
    POSIX path relative to ``directory`` -> its mode. ``start`` numbers the files, so a
    second call adds new ones."""
    rng = np.random.default_rng(seed)
    written = {}
    for name in classes:
        for i in range(start, start + per_class):
            mode, suffix, width, height = KINDS[i % len(KINDS)]
            relative = f"{prefix}{name}/{'sub/' if i % 3 == 2 else ''}{i:03d}{suffix}"
            path = Path(directory) / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            image = image_of(mode, width, height, rng)
            if suffix == ".png":
                image.save(path, transparency=0) if mode == "P" else image.save(path)
            else:
                image.save(path, quality=90)
            written[relative] = mode
    return written


def png_claiming(path: Path, width: int, height: int, mode: str = "L") -> Path:
    """A real 4x4 PNG of ``mode`` ("L", "RGB" or "I;16") whose header claims ``width`` x
    ``height``: opening it reads that size, and decoding it would fail (the data is 4x4)."""
    import struct
    import zlib

    buffer = io.BytesIO()
    image_of(mode, 4, 4, np.random.default_rng(0)).save(buffer, format="PNG")
    raw = buffer.getvalue()
    assert raw[12:16] == b"IHDR"
    chunk = b"IHDR" + struct.pack(">II", width, height) + raw[24:29]  # bit depth, colour type, ... kept
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(raw[:8] + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk)) + raw[33:])
    return path


def cifar_batch_with_labels(path: Path, labels: int, images: int = 3) -> Path:
    """A protocol-2 CIFAR batch of ``images`` black images whose 'labels' list holds
    ``labels`` zeros (a multiple of 1000), in 1000-item chunks as pickle writes a list;
    written without building the list here."""
    def text(value: str) -> bytes:  # BINUNICODE
        return b"X" + len(value).to_bytes(4, "little") + value.encode()

    array = pickle.dumps(np.zeros((images, 3072), np.uint8), protocol=2)[2:-1]  # without PROTO and STOP
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(b"\x80\x02}" + text("labels") + b"]")  # PROTO 2, {}, "labels", []
        chunk = b"(" + b"K\x00" * 1000 + b"e"  # MARK, 1000 x BININT1 0, APPENDS
        for _ in range(labels // 1000):
            handle.write(chunk)
        handle.write(b"s" + text("data") + array + b"s.")  # SETITEM, "data", the array, SETITEM, STOP
    return path
