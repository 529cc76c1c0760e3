"""What every source reader shares: the in-memory form it returns (:class:`SourceData`),
image files still to convert (:class:`FileSplit`), fetching a missing dataset
(:func:`ensure_local`), and :func:`conform`, which ingest applies to every source.

Array sources return their native size and channels; :func:`conform` then converts them
to ``data.channels`` / ``data.image_size`` (resize the short side, then centre-crop).
Images are never upscaled: a source smaller than ``data.image_size`` is refused.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from byol_core.errors import ByolError

Listed = tuple[str, int, int]  # an image file: (POSIX path below data.source_dir, size, mtime in ns)


@dataclass(frozen=True)
class FileSplit:
    """A split of image files still to be converted (ingest converts them, through its
    cache, straight into the prepared shards). ``files`` are in sample order (a hash of the
    path): a ``cap`` takes the first ``cap`` usable ones."""

    root: Path
    files: list[Listed]
    channels: int
    size: int
    cap: int | None = None

    def __len__(self) -> int:
        return len(self.files)


@dataclass
class SourceData:
    """What a source read. ``origins`` names each image's place in the source, relative to
    ``data.source_dir`` (``"data_batch_1#17"``, ``"cat/001.png"``); ``skipped`` lists the
    files left out under ``on_corrupt: skip`` as ``{"split", "origin", "reason"}``."""

    images: dict[str, np.ndarray | FileSplit]  # split -> uint8 (N, C, H, W), or files to convert
    labels: dict[str, np.ndarray]  # split -> int64 (N,); UNLABELED in the unlabeled split
    origins: dict[str, list[str]]
    classes: list[str]
    skipped: list[dict] = field(default_factory=list)

    def check(self, where: Path) -> SourceData:
        for split, images in self.images.items():
            if len(images) != len(self.labels[split]) or len(images) != len(self.origins[split]):
                raise ByolError(f"{where}: the {split} split has {len(images)} images but "
                                f"{len(self.labels[split])} labels. Fetch matching files.")
        return self


def missing_files(directory: Path, names: Iterable[str]) -> list[str]:
    return [name for name in names if not (directory / name).is_file()]


def ensure_local(directory: Path, required: list[str], what: str, download: Callable[[Path], None],
                 how: str) -> Path:
    """``directory`` when it holds every file in ``required`` (paths relative to it).

    A missing or empty folder is filled by ``download(scratch)``, which must leave the
    files at the same relative paths under ``scratch``; they are moved into place only
    when all arrived. A folder holding only some of the files is an error: a partial
    download or a wrong path, which downloading over would hide."""
    missing = missing_files(directory, required)
    if not missing:
        return directory
    if directory.is_dir() and any(directory.iterdir()):
        raise ByolError(f"data.source_dir {directory} lacks {', '.join(missing)} for {what}. {how}")
    directory.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{directory.name}.download-", dir=directory.parent))
    try:
        try:
            download(scratch)
        except Exception as exc:  # no network, or the mirror is down
            raise ByolError(f"data.source_dir {directory} holds no {what} files and downloading them "
                            f"failed ({type(exc).__name__}). {how}") from None
        still = missing_files(scratch, required)
        if still:
            raise ByolError(f"downloading {what} did not produce {', '.join(still)}. {how}")
        for name in required:
            (directory / name).parent.mkdir(parents=True, exist_ok=True)
            os.replace(scratch / name, directory / name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return directory


def to_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """uint8 (N, C, H, W) -> ``channels`` channels: grey is repeated into RGB, and RGB is
    reduced to luma with ITU-R 601-2 weights (as PIL's ``convert("L")``)."""
    have = images.shape[1]
    if have == channels:
        return images
    if have == 1 and channels == 3:
        return np.repeat(images, 3, axis=1)
    if have == 3 and channels == 1:
        weights = np.array([299, 587, 114], dtype=np.uint32).reshape(1, 3, 1, 1)
        luma = (images.astype(np.uint32) * weights).sum(axis=1, keepdims=True)
        return ((luma + 500) // 1000).astype(np.uint8)
    raise ByolError(f"cannot convert {have}-channel images to {channels} channels: data.channels must be 1 or 3.")


def resize_crop(images: np.ndarray, size: int, where: str, chunk: int = 2048) -> np.ndarray:
    """Resize uint8 (N, C, H, W) so the short side is ``size`` (antialiased bilinear), then
    centre-crop to ``size`` x ``size``. Downscaling only."""
    import torch  # here, not at the top: only array sources that are resized need it
    import torch.nn.functional as F

    n, c, h, w = images.shape
    if (h, w) == (size, size):
        return images
    if min(h, w) < size:
        raise ByolError(f"{where}: images are {h}x{w} px, smaller than data.image_size {size}. "
                        "Images are never upscaled: lower data.image_size, or set it to null for the native size.")
    scale = size / min(h, w)
    new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
    top, left = (new_h - size) // 2, (new_w - size) // 2
    out = np.empty((n, c, size, size), dtype=np.uint8)
    for start in range(0, n, chunk):
        x = torch.from_numpy(images[start:start + chunk]).float()
        if (new_h, new_w) != (h, w):
            x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)
        x = x[:, :, top:top + size, left:left + size]
        out[start:start + chunk] = x.round().clamp_(0, 255).to(torch.uint8).numpy()
    return out


def conform(data: SourceData, channels: int | None, size: int | None, where: str) -> SourceData:
    """Convert every split to ``channels`` and ``size`` (None: leave as read)."""
    for split, images in data.images.items():
        if isinstance(images, FileSplit):  # converted to the final shape as they are read
            continue
        if channels is not None:
            images = to_channels(images, channels)
        if size is not None:
            images = resize_crop(images, size, where)
        data.images[split] = images
    return data
