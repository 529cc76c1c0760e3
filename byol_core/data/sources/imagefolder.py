"""A folder tree of image files, one folder per class.

Two layouts: ``train/<class>/...`` beside ``test/<class>/...`` (or ``val/``), or plain
``<class>/...`` folders, split per file by a hash of its path, so adding files never moves
an old one to the other split. ``unlabeled/`` directly under ``data.source_dir`` is never a
class: the central code reads it as the unlabeled split (with :func:`list_images` and
:func:`convert_files`). Files lying loose in ``data.source_dir`` belong to no class and are
ignored, as are dotfiles and dot-folders.

Every image becomes ``data.channels`` (None: 3) channels of 8 bits, upright by its EXIF
orientation; transparent pixels are composited over white (how a page shows them). The
short side is resized to ``data.image_size`` (bicubic, which antialiases) and the centre
cut square. A file that cannot be used fails the run or, under ``on_corrupt: skip``, is
listed and left out; a problem with the tree itself always fails.

Memory follows an image's pixel count, whatever its bit depth: PIL reads the size from the
header and refuses more than its decompression-bomb limit (2 x ``Image.MAX_IMAGE_PIXELS``,
about 179 million pixels) before decoding anything, and 16- and 32-bit grey is scaled to 8
bits band by band, so it costs its decoded bytes and a byte a pixel, not eight.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import os
import stat
import struct
import sys
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps
from tqdm import tqdm

from byol_core import progress
from byol_core.errors import ByolError, printable
from byol_core.schema.data import DataConfig
from byol_core.data.sources import UNLABELED_FOLDER
from byol_core.data.sources.common import FileSplit, Listed, SourceData

if TYPE_CHECKING:
    from byol_core.data.scan import FileIndex

BACKGROUND = (255, 255, 255, 255)  # what transparent pixels become
PARALLEL_FROM = 64  # fewer files are converted in-process: starting workers costs more
_GREY_WIDE = ("I;16", "I;16B", "I;16L", "I;16N", "I")
WIDE_BAND_PIXELS = 1 << 20  # wide greyscale is scaled this many pixels at a time (8 MiB as int64)
_ALPHA = ("LA", "La", "PA", "RGBA", "RGBa")
_READ_ERRORS = (OSError, ValueError, EOFError, SyntaxError, IndexError, struct.error, Image.DecompressionBombError)
ADVICE = {
    "type": "Convert or remove it, or set data.on_corrupt: skip.",
    "read": "Remove or replace it, or set data.on_corrupt: skip to leave it out.",
    "small": "Remove it, lower data.image_size, or set data.on_corrupt: skip.",
}


@functools.cache
def _extensions() -> frozenset[str]:
    return frozenset(ext.lower() for ext in Image.registered_extensions())


def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in _extensions()


Seen = dict[tuple[int, int], Path]  # a real folder (device, inode) -> the path it was first read under


def enter(folder: Path, seen: Seen) -> None:
    """Record that ``folder`` is read. Symlinked folders are followed (class folders are often
    linked from other disks), so a link can lead back to a folder that contains it, which
    would never end, or to one read already, whose images would count twice: both are
    refused, naming the link."""
    try:
        info = os.stat(folder)
    except OSError:  # gone or unreadable: reading it reports that
        return
    first = seen.setdefault((info.st_dev, info.st_ino), folder)
    if first == folder:
        return
    shown, real = printable(str(folder)), os.path.realpath(folder)
    was = printable(str(first)) + ("" if real == str(first) else f" ({printable(real)})")
    if first in folder.parents:
        raise ByolError(f"{shown}: a symlink back to {was}, a folder that contains it, so reading the folder would "
                        "never end. Remove the link, or point it at a folder outside that one.")
    raise ByolError(f"{shown} and {was} are the same folder, reached twice through a symlink, so its images would "
                    "be read twice. Remove the link, or copy the folder if you mean it twice.")


def list_images(folder: Path, root: Path, seen: Seen | None = None, index: FileIndex | None = None) -> list[Listed]:
    """Every regular file below ``folder`` except dotfiles and anything in a dot-folder, as
    (POSIX path relative to ``root``, size, mtime in ns), sorted by that path. FIFOs,
    sockets and devices are passed over (opening one can block forever); symlinked folders
    are followed, each real folder once (:func:`enter`; ``seen`` carries the folders read
    across calls). Files of other types are kept, so they can be reported rather than
    silently passed over. ``index``: the files a scan of ``root`` just found by the same
    rules (ingest's check of the folder against its listing), taken instead of a second walk."""
    seen = {} if seen is None else seen
    enter(folder, seen)
    if index is not None:
        return index.below(folder.relative_to(root).as_posix() if folder != root else "")
    found = []
    base = folder.relative_to(root).as_posix() if folder != root else ""
    for parent, dirs, names in os.walk(folder, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in dirs:  # before os.walk goes down: a loop is refused, not followed
            enter(Path(parent) / name, seen)
        rel_parent = Path(parent).relative_to(folder).as_posix()
        prefix = "/".join(p for p in (base, "" if rel_parent == "." else rel_parent) if p)
        for name in names:
            if name.startswith("."):
                continue
            try:
                info = os.stat(os.path.join(parent, name))
            except OSError:  # a dangling link: listed, so that reading it reports the problem
                found.append((f"{prefix}/{name}" if prefix else name, -1, -1))
                continue
            if stat.S_ISREG(info.st_mode):
                found.append((f"{prefix}/{name}" if prefix else name, info.st_size, info.st_mtime_ns))
    return sorted(found)


def _wide_grey(image: Image.Image) -> Image.Image:
    """16- or 32-bit greyscale -> "L", scaled, never clipped: 0..65535 maps onto 0..255, and
    32-bit values beyond that range stretch it to fit. Row bands of about WIDE_BAND_PIXELS
    are widened to int64 one at a time, so the image costs its decoded bytes and one byte a
    pixel for the result, not eight bytes a pixel for the whole of it."""
    lo, hi = image.getextrema()
    lo, hi = min(0, int(lo)), max(65535, int(hi))
    width, height = image.size
    out = np.empty((height, width), np.uint8)
    rows = max(1, WIDE_BAND_PIXELS // max(1, width))
    for top in range(0, height, rows):
        band = np.asarray(image.crop((0, top, width, min(height, top + rows)))).astype(np.int64)
        out[top:top + rows] = ((band - lo) * 255 + (hi - lo) // 2) // (hi - lo)
    return Image.frombuffer("L", (width, height), out, "raw", "L", 0, 1)  # shares ``out``: no copy


def _to_mode(image: Image.Image, channels: int) -> Image.Image:
    """Any PIL mode -> "L" or "RGB" (wide greyscale: :func:`_wide_grey`)."""
    if image.mode in _GREY_WIDE:
        image = _wide_grey(image)
    if image.mode in _ALPHA or (image.mode == "P" and "transparency" in image.info):
        image = Image.alpha_composite(Image.new("RGBA", image.size, BACKGROUND), image.convert("RGBA"))
    if image.mode not in ("L", "RGB"):
        image = image.convert("RGB")
    target = "L" if channels == 1 else "RGB"
    return image if image.mode == target else image.convert(target)


def convert_one(path: str, channels: int, size: int) -> tuple[np.ndarray | None, str, str]:
    """(uint8 (C, size, size), "", "") or (None, problem kind, what is wrong)."""
    suffix = Path(path).suffix.lower()
    if suffix not in _extensions():
        return None, "type", f"unsupported file type '{suffix}' (not an image format PIL reads)"
    try:
        with Image.open(path) as image:
            width, height = image.size
            if min(width, height) >= size:
                image.draft(image.mode, (size, size))  # JPEG: decode at a reduced scale >= size
            image.load()
            ImageOps.exif_transpose(image, in_place=True)  # in place: without it, every image is copied whole
            image = _to_mode(image, channels)
    except _READ_ERRORS as exc:
        return None, "read", f"cannot be read as an image ({str(exc) or type(exc).__name__})"
    if min(width, height) < size:
        return None, "small", f"{width}x{height} px is smaller than data.image_size {size} (images are never upscaled)"
    w, h = image.size
    new = (max(size, round(w * size / min(w, h))), max(size, round(h * size / min(w, h))))
    if new != (w, h):
        image = image.resize(new, Image.Resampling.BICUBIC)
    left, top = (new[0] - size) // 2, (new[1] - size) // 2
    pixels = np.asarray(image.crop((left, top, left + size, top + size)))
    return (pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)), "", ""


def _convert_chunk(paths: list[str], channels: int, size: int) -> list[tuple[np.ndarray | None, str, str]]:
    return [convert_one(path, channels, size) for path in paths]


def results(paths: list[str], channels: int, size: int, split: str, workers: int | None = None) -> Iterator[tuple]:
    """convert_one's result for each path, in order; in worker processes (None: one per
    CPU) for long lists. Chunks are submitted a few at a time, so memory holds a bounded
    number of converted images however long the list."""
    workers = workers or os.cpu_count() or 1
    with tqdm(total=len(paths), desc=f"{split} images", unit="img", disable=None if paths else True,
              file=sys.stderr) as bar:
        if workers <= 1 or len(paths) < PARALLEL_FROM:
            for path in paths:
                yield convert_one(path, channels, size)
                bar.update()
            return
        # chunks of at most 256 files and about 4 MiB of pixels, at most 4 per worker in flight
        step = max(1, min(256, (4 << 20) // (channels * size * size), -(-len(paths) // (workers * 8))))
        chunks = (paths[i:i + step] for i in range(0, len(paths), step))
        pool = ProcessPoolExecutor(max_workers=workers)
        in_flight: collections.deque = collections.deque()
        try:
            for chunk in chunks:
                in_flight.append(pool.submit(_convert_chunk, chunk, channels, size))
                if len(in_flight) >= workers * 4:
                    done = in_flight.popleft().result()
                    yield from done
                    bar.update(len(done))
            while in_flight:
                done = in_flight.popleft().result()
                yield from done
                bar.update(len(done))
        finally:  # a failure stops the run: drop the chunks not started yet
            pool.shutdown(wait=True, cancel_futures=True)


def _class_files(folder: Path, root: Path, seen: Seen, reserved: tuple[str, ...] = (),
                 index: FileIndex | None = None) -> dict[str, list[Listed]]:
    """Class name -> its files, for each (non-dot) folder in ``folder``, symlinked ones too."""
    entries = [d for d in folder.iterdir() if not d.name.startswith(".") and d.name not in reserved]
    for link in entries:
        if link.is_symlink() and not link.exists():  # a class on a disk that is not mounted must not just vanish
            raise ByolError(f"{printable(str(link))}: a symlink to {printable(os.readlink(link))}, which does not "
                            "exist (a disk not mounted?). Fix or remove the link.")
    enter(folder, seen)
    classes = sorted(d.name for d in entries if d.is_dir())
    found = {}
    for name in classes:
        files = list_images(folder / name, root, seen, index)
        if not any(is_image_name(Path(f[0])) for f in files):
            raise ByolError(f"{folder}: class folder '{printable(name)}' holds no images. Add images or remove the "
                            "folder.")
        found[name] = files
    if not found:
        raise ByolError(f"{folder} holds no class folders. Put each class's images in a folder named after the "
                        f"class (a folder named {UNLABELED_FOLDER}/ directly in data.source_dir is not a class).")
    return found


def split_share(relative: str) -> float:
    """A stable, uniform number in [0, 1) for a file's POSIX path below data.source_dir."""
    key = relative.encode("utf-8", "surrogateescape")
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") / 2.0**64


def _split_layout(root: Path) -> tuple[Path, Path] | None:
    """(train folder, test folder) when ``root`` holds split folders, else None."""
    present = [name for name in ("train", "test", "val") if (root / name).is_dir()]
    if present == ["train", "test", "val"]:
        raise ByolError(f"{root} holds both test/ and val/: the probe tests on one of them. Merge or remove one.")
    if "train" in present and len(present) == 2:
        return root / "train", root / present[1]
    for name in present:  # a split folder without its partner, unless it is a class after all
        if not any(f.is_file() and is_image_name(f) for f in (root / name).iterdir()) and \
                any(d.is_dir() for d in (root / name).iterdir()):
            partner = "test/ (or val/)" if name == "train" else "train/"
            raise ByolError(f"{root / name} looks like a split folder of classes, but {root} has no {partner}. "
                            f"Add it, or move the class folders up if {name}/ is not meant as a split.")
    return None


def _split_files(cfg: DataConfig, index: FileIndex | None) -> tuple[list[str], dict[str, list[Listed]],
                                                                    dict[str, np.ndarray]]:
    """Class names, each split's files in sample order, and their labels."""
    root = cfg.source_dir
    layout = _split_layout(root)
    seen: Seen = {}
    enter(root, seen)
    if layout is not None:
        train, test = (_class_files(folder, root, seen, index=index) for folder in layout)
        stray = sorted(set(test) - set(train))
        if stray:
            raise ByolError(f"{layout[1]}: class folder(s) {', '.join(map(printable, stray))} have no match in "
                            f"{layout[0]}. Every test class must be a train class: rename or remove them.")
        classes = sorted(train)
        groups = {"train": train, "test": test}
        shares = None
    else:
        by_class = _class_files(root, root, seen, reserved=(UNLABELED_FOLDER,), index=index)
        classes = sorted(by_class)
        groups, shares = {"train": {}, "test": {}}, {"train": {}, "test": {}}  # shares: each file's split_share
        for name, files in by_class.items():
            share = np.array([split_share(f[0]) for f in files], dtype=np.float64)
            for split, test in (("train", False), ("test", True)):
                picked = np.flatnonzero((share < cfg.test_fraction) == test)
                groups[split][name] = [files[j] for j in picked.tolist()]
                shares[split][name] = share[picked]
    _note_links(root, seen)
    number = {name: i for i, name in enumerate(classes)}
    splits, labels = {}, {}
    for split, group in groups.items():
        files = [f for part in group.values() for f in part]
        label = np.concatenate([np.full(len(part), number[name], dtype=np.int64) for name, part in group.items()]
                               or [np.zeros(0, dtype=np.int64)])
        order = _sample_permutation(files, None if shares is None else
                                    np.concatenate(list(shares[split].values()) or [np.zeros(0)]))
        splits[split], labels[split] = [files[j] for j in order.tolist()], label[order]
    for split, files in splits.items():
        if not files:  # only a hash split can leave one empty: every class folder holds an image
            total = sum(len(f) for f in splits.values())
            raise ByolError(f"{root}: none of its {total} files fell in the {split} split at data.test_fraction "
                            f"{cfg.test_fraction} (each file's place is fixed by a hash of its path). Add images, "
                            "change data.test_fraction, or use train/ and test/ folders.")
    return [printable(c) for c in classes], splits, labels


def _note_links(root: Path, seen: Seen) -> None:
    """Say which folders were read through symlinks: DVC hashes ``data.source_dir`` without
    looking inside them, so a change there does not rerun ingest under ``dvc repro``."""
    linked = sorted(printable(p.relative_to(root).as_posix()) for p in seen.values() if p != root and p.is_symlink())
    if linked:
        shown = ", ".join(linked[:5]) + (f" and {len(linked) - 5} more" if len(linked) > 5 else "")
        progress.report(f"ingest: read through symlinks: {shown}. DVC does not look inside symlinked folders, so "
                        "`dvc repro` will not rerun ingest when files there change: run `dvc repro --force ingest` "
                        "(or `byol ingest`) after changing them.")


def _sample_permutation(files: list[Listed], shares: np.ndarray | None = None) -> np.ndarray:
    """The order of :func:`sample_order` as indices into ``files``: by share, then by path
    where two shares are equal (a stable sort, then each run of equal shares by path)."""
    if shares is None:
        shares = np.array([split_share(f[0]) for f in files], dtype=np.float64)
    order = np.argsort(shares, kind="stable")
    ordered = shares[order]
    tied = np.flatnonzero(ordered[1:] == ordered[:-1])
    for start in tied[np.r_[True, np.diff(tied) > 1]] if len(tied) else ():
        stop = start + 1
        while stop < len(ordered) and ordered[stop] == ordered[start]:
            stop += 1
        order[start:stop] = sorted(order[start:stop].tolist(), key=lambda j: files[j][0])
    return order


def sample_order(files: list[Listed], shares: np.ndarray | None = None) -> list[Listed]:
    """``files`` in the order of their path hash: stable, and mixed across classes, so the
    first N (a ``data.max_*`` cap) is a fair sample rather than the first class or two.
    ``shares``: each file's :func:`split_share`, when the caller has them already."""
    return [files[j] for j in _sample_permutation(files, shares).tolist()]


def read(cfg: DataConfig, index: FileIndex | None = None) -> SourceData:
    """The two splits as files still to convert (:class:`FileSplit`), in sample order
    (``index``: the files below ``data.source_dir``, if a scan just listed them)."""
    root = cfg.source_dir
    if not root.is_dir():
        raise ByolError(f"data.source_dir {root} does not exist. Point it at a folder of class folders "
                        "(or train/ and test/ of them).")
    classes, splits, labels = _split_files(cfg, index)
    images, origins = {}, {}
    for split in ("train", "test"):
        files = splits[split]
        images[split] = FileSplit(root, files, cfg.channels or 3, cfg.image_size, cfg.caps[split])
        origins[split] = [f[0] for f in files]
    return SourceData(images=images, labels=labels, origins=origins, classes=classes).check(root)
