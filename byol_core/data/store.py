"""Sharded uint8 image arrays: written as a stream, read a few rows at a time.

A split of N images (C, H, W) lies in shards ``{split}-{k:05d}.npy`` of at most
``shard_bytes`` each (ordinary .npy files: ``np.load(path, mmap_mode="r")`` opens one).
Shard boundaries are content-defined (as in rsync or restic): a shard ends after an image
whose key (its place in the source) hashes below a threshold, so adding images in one place
of the order rewrites the shard they land in and leaves every other shard byte for byte as
it was. DVC stores files by content, so ``dvc push`` after new data sends the new and
changed shards only.

Readers copy out only the rows they index, with ``pread`` through the page cache: memory
holds what was asked for, however large the data set (see :class:`_Rows` for why not a
memory map).
"""

from __future__ import annotations

import ast
import hashlib
import os
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from byol_core.errors import ByolError

DIGEST_BYTES = 16  # per-image content digest (blake2b)
_VALUES = np.arange(256, dtype=np.int64)
_SQUARES = _VALUES * _VALUES
_NPY_MAGIC = b"\x93NUMPY"


def shard_name(split: str, k: int) -> str:
    return f"{split}-{k:05d}.npy"


def image_digest(image: np.ndarray) -> bytes:
    return hashlib.blake2b(image.tobytes(), digest_size=DIGEST_BYTES).digest()


def _boundary_threshold(image_bytes: int, shard_bytes: int) -> int:
    """Key hashes below this end a shard: on average every ``shard_bytes / 2`` bytes."""
    per_shard = max(1, (shard_bytes // 2) // image_bytes)
    return (1 << 64) // per_shard


def _key_hash(key: str) -> int:
    # Personalised, so it is independent of the path hash that splits image folders into
    # train and test (the same hash would cut train's shards only on keys in a narrow band).
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=8,
                                          person=b"shard-cut").digest(), "big")


def _npy_header(shape: tuple[int, ...]) -> bytes:
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|u1", "fortran_order": False, "shape": shape})
    return buf.getvalue()


@dataclass
class Shard:
    """What a written shard holds, beyond its bytes: enough to reuse it without reading it."""

    count: int
    digests: bytes  # DIGEST_BYTES per image, in order
    pixel_sum: list[int]  # per channel
    pixel_sq_sum: list[int]
    md5: str | None = None  # of the file's bytes (what DVC names it by), when known


@dataclass
class ShardWriter:
    """Writes one split's images into shards in ``folder``, shard by shard.

    :meth:`plan` cuts the split into shards from the images' keys alone; each shard is then
    written from chunks of its images (:meth:`write`: memory holds one chunk; the header, with
    the range's count, goes first) or taken over from an identical earlier shard
    (:meth:`link`). Also gathers what the card needs: each image's content digest and exact
    per-channel sums of the pixels and their squares."""

    folder: Path
    split: str
    image_shape: tuple[int, int, int]
    shard_bytes: int
    shards: list[dict] = field(default_factory=list)
    digests: bytearray = field(default_factory=bytearray)  # DIGEST_BYTES per image, back to back

    def __post_init__(self) -> None:
        self.image_bytes = int(np.prod(self.image_shape))
        self.threshold = _boundary_threshold(self.image_bytes, self.shard_bytes)
        self.max_per_shard = max(1, self.shard_bytes // self.image_bytes)
        channels = self.image_shape[0]
        self.pixel_sum = np.zeros(channels, dtype=np.int64)
        self.pixel_sq_sum = np.zeros(channels, dtype=np.int64)

    @property
    def count(self) -> int:
        return len(self.digests) // DIGEST_BYTES

    def digest_rows(self) -> np.ndarray:
        """The digests as uint8 (count, DIGEST_BYTES), a view."""
        return np.frombuffer(self.digests, dtype=np.uint8).reshape(-1, DIGEST_BYTES)

    def plan(self, keys: list[str]) -> list[tuple[int, int]]:
        """The shards as row ranges: one ends after a key that hashes below the threshold
        (content-defined), or when it holds ``shard_bytes``."""
        ranges, start = [], 0
        for i, key in enumerate(keys):
            if i + 1 - start >= self.max_per_shard or _key_hash(key) < self.threshold:
                ranges.append((start, i + 1))
                start = i + 1
        if start < len(keys):
            ranges.append((start, len(keys)))
        return ranges

    def next_name(self) -> str:
        return shard_name(self.split, len(self.shards))

    def write(self, chunks, count: int) -> tuple[Path, Shard]:
        """The next shard, from ``chunks`` of uint8 images, ``count`` of them in all (a range of
        :meth:`plan`), so that the header goes first and the file's md5 is taken as it is
        written (:attr:`Shard.md5`); returns its path and contents. A chunk may come as
        (images, their :func:`image_digest` back to back) when the caller took them already."""
        path = self.folder / self.next_name()
        digests, sums, squares, written = [], np.zeros_like(self.pixel_sum), np.zeros_like(self.pixel_sum), 0
        header = _npy_header((count, *self.image_shape))
        md5 = hashlib.md5(header)
        with open(path, "wb") as handle:
            handle.write(header)
            for chunk in chunks:
                images, taken = chunk if isinstance(chunk, tuple) else (chunk, None)
                if images.shape[1:] != tuple(self.image_shape) or images.dtype != np.uint8:
                    raise ValueError(f"{self.split}: expected uint8 images {self.image_shape}, got "
                                     f"{images.dtype} {images.shape[1:]}")
                flat = np.ascontiguousarray(images).reshape(len(images), -1)
                if taken is not None and len(taken) == len(images) * DIGEST_BYTES:
                    digests.append(taken)
                else:
                    digests.extend(hashlib.blake2b(row.tobytes(), digest_size=DIGEST_BYTES).digest() for row in flat)
                for c in range(images.shape[1]):  # exact sums from a histogram of the 256 values
                    counts = np.bincount(np.ascontiguousarray(images[:, c]).reshape(-1), minlength=256).astype(np.int64)
                    sums[c] += int(counts @ _VALUES)
                    squares[c] += int(counts @ _SQUARES)
                data = flat.tobytes()
                handle.write(data)
                md5.update(data)
                written += len(images)
            if written != count:
                raise AssertionError(f"{path.name}: {written} images written, {count} announced")
            handle.flush()
            os.fsync(handle.fileno())
        shard = Shard(count, b"".join(digests), sums.tolist(), squares.tolist(), md5.hexdigest())
        self._record(path.name, shard)
        return path, shard

    def link(self, source: Path, shard: Shard) -> Path:
        """The next shard is ``source`` (an identical earlier one): a hard link, or a copy
        where links cannot be made; nothing is read."""
        path = self.folder / self.next_name()
        try:
            os.link(source, path)
        except OSError:
            shutil.copyfile(source, path)
        self._record(path.name, shard)
        return path

    def _record(self, name: str, shard: Shard) -> None:
        self.shards.append({"file": name, "count": shard.count})
        self.digests += shard.digests
        self.pixel_sum += np.asarray(shard.pixel_sum, dtype=np.int64)
        self.pixel_sq_sum += np.asarray(shard.pixel_sq_sum, dtype=np.int64)

    def write_all(self, keys: list[str], images, rows: int) -> None:
        """Every shard of ``images`` (an array, or anything sliced like one), ``rows`` at a time."""
        if len(keys) != len(images):
            raise ValueError("one key per image")
        for start, stop in self.plan(keys):
            self.write((np.asarray(images[i:min(i + rows, stop)]) for i in range(start, stop, rows)), stop - start)

    def close(self) -> dict:
        """The split's layout ``{"count", "shards"}``."""
        return {"count": self.count, "shards": self.shards}


def read_npy_header(path: Path, handle, descr: str = "|u1") -> tuple[tuple[int, ...], int]:
    """(shape, data offset) of a C-order .npy file of dtype ``descr`` (uint8 unless told);
    anything else is refused."""
    magic = handle.read(8)
    if len(magic) < 8 or not magic.startswith(_NPY_MAGIC):
        raise ValueError("not a .npy file")
    major = magic[6]
    if major not in (1, 2, 3):
        raise ValueError(f"unknown .npy version {major}")
    size_bytes = 2 if major == 1 else 4
    raw = handle.read(size_bytes)
    if len(raw) != size_bytes:
        raise ValueError("cut header")
    length = int.from_bytes(raw, "little")
    if length > 65536:
        raise ValueError("header too long")
    text = handle.read(length)
    if len(text) != length:
        raise ValueError("cut header")
    try:
        header = ast.literal_eval(text.decode("latin1"))
    except (ValueError, SyntaxError) as exc:
        raise ValueError("unreadable header") from exc
    if not isinstance(header, dict) or header.get("descr") != descr or header.get("fortran_order") is not False:
        raise ValueError(f"not C-ordered {np.dtype(descr)} data")
    shape = header.get("shape")
    if not isinstance(shape, tuple) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise ValueError("bad shape in header")
    return shape, 8 + size_bytes + length


class _Rows:
    """One file's rows, (N, C, H, W) uint8 from ``offset``, read with ``pread`` into the
    caller's buffer. (A memory map would do, but a fault maps a whole page-cache folio, up to
    megabytes on current kernels, so random rows would bring most of a shard into the
    resident set; ``pread`` reads through the same page cache without that.)"""

    def __init__(self, path: Path, count: int, image_shape: tuple[int, ...], offset: int | None):
        self.path = path
        self.row_bytes = int(np.prod(image_shape))
        raw = offset is not None
        try:
            if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO or device would block or never end
                raise ByolError(f"{path}: not a regular file. Run `byol ingest` again.")
            self.fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            raise ByolError(f"{path}: cannot read image shard ({exc.strerror}). Run `byol ingest` again.") from None
        try:
            with os.fdopen(os.dup(self.fd), "rb") as handle:
                if offset is None:
                    shape, offset = read_npy_header(path, handle)
                    if shape != (count, *image_shape):
                        raise ValueError(f"holds {shape}, the layout says {(count, *image_shape)}")
                size = os.fstat(handle.fileno()).st_size
            need = offset + count * self.row_bytes
            if size < need or (size != need and not raw):  # a pack may hold uncommitted rows at its end
                raise ValueError(f"is {size} bytes, {need} expected")
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_RANDOM)  # batches are random rows: no read-ahead
        except (OSError, ValueError) as exc:
            os.close(self.fd)
            raise ByolError(f"{path}: cannot read image shard ({exc}). Run `byol ingest` again.") from None
        self.offset = offset

    def read(self, first: int, out: np.ndarray) -> None:
        """Rows ``first:first + len(out)`` into ``out`` (C-contiguous)."""
        view = memoryview(out).cast("B")
        got, at = 0, self.offset + first * self.row_bytes
        while got < len(view):
            n = os.preadv(self.fd, [view[got:]], at + got)
            if n == 0:
                raise ByolError(f"{self.path}: ended early (changed while being read?). Run `byol ingest` again.")
            got += n

    def close(self) -> None:
        os.close(self.fd)


class ShardedImages:
    """Images spread over shard files, indexed like one read-only uint8 (N, C, H, W) array.

    ``x[a:b]`` and :meth:`take` return copies; nothing is read until indexed."""

    def __init__(self, files: list[Path], counts: list[int], image_shape: tuple[int, int, int],
                 raw: bool = False):
        self.files, self.counts = list(files), [int(c) for c in counts]
        self.image_shape = tuple(image_shape)
        self.raw = raw  # headerless files (the conversion cache's packs)
        self.starts = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)
        self._open: dict[int, _Rows] = {}

    @property
    def shape(self) -> tuple[int, ...]:
        return (int(self.starts[-1]), *self.image_shape)

    dtype = np.dtype(np.uint8)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape))

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __add__(self, other: ShardedImages) -> ShardedImages:
        """Both, one after the other (no data is read)."""
        if other.image_shape != self.image_shape:
            raise ValueError("image shapes differ")
        return ShardedImages(self.files + other.files, self.counts + other.counts, self.image_shape)

    def _shard(self, k: int) -> _Rows:
        if k not in self._open:
            self._open[k] = _Rows(self.files[k], self.counts[k], self.image_shape, 0 if self.raw else None)
        return self._open[k]

    def close(self) -> None:
        for rows in self._open.values():
            rows.close()
        self._open.clear()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return self.take(np.array([key]))[0]
        if not isinstance(key, slice):
            return self.take(np.asarray(key))
        start, stop, step = key.indices(len(self))
        if step != 1:
            return self.take(np.arange(start, stop, step))
        out = np.empty((max(0, stop - start), *self.image_shape), dtype=np.uint8)
        pos = start
        while pos < stop:
            k = int(np.searchsorted(self.starts, pos, side="right")) - 1
            end = min(stop, int(self.starts[k + 1]))
            self._shard(k).read(pos - int(self.starts[k]), out[pos - start:end - start])
            pos = end
        return out

    def take(self, indices: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Images at ``indices`` (any order, repeats allowed), into ``out`` when given."""
        indices = np.asarray(indices, dtype=np.int64)
        if len(indices) and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"index out of range for {len(self)} images")
        if out is None:
            out = np.empty((len(indices), *self.image_shape), dtype=np.uint8)
        shard_of = np.searchsorted(self.starts, indices, side="right") - 1
        for i, (index, k) in enumerate(zip(indices.tolist(), shard_of.tolist())):
            self._shard(k).read(index - int(self.starts[k]), out[i:i + 1])
        return out

    def subset(self, indices: np.ndarray) -> Subset:
        """The images at ``indices``, read only when sliced."""
        return Subset(self, np.asarray(indices, dtype=np.int64))

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        whole = self[:]
        return whole if dtype is None else whole.astype(dtype)

    def iter_chunks(self, rows: int):
        """(start, images) for consecutive chunks of at most ``rows`` images."""
        for start in range(0, len(self), rows):
            yield start, self[start:start + rows]


class Subset:
    """Chosen rows of a :class:`ShardedImages`, sliced like an array (read when sliced)."""

    def __init__(self, images: ShardedImages, indices: np.ndarray):
        self.images, self.indices = images, indices

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.indices), *self.images.image_shape)

    def __getitem__(self, key: slice) -> np.ndarray:
        return self.images.take(self.indices[key])
