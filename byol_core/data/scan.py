"""The source listing: every file in ``data.source_dir`` as (path, size, digest), in one Parquet file.

DVC tracks this listing (``paths.listing``) instead of the folder: a folder of a million files
costs DVC minutes and gigabytes to list and hash on every ``dvc status``, while a listing of
a few MiB costs it nothing. Dagster's observation of the raw files takes the same scan and
hashes the same bytes, so its data version is the md5 that ``dvc.lock`` records.

A scan walks the folder once (``os.scandir``), stats every file, and reads only the files it
has not read before: a side cache in ``paths.cache`` (not a DVC output) maps each file's
(path, size, mtime in ns) to its digest, so an unchanged file is never opened. The mtime stays
out of the listing, so the same contents give the same listing on any machine, byte for byte
(with the same pyarrow), and DVC sees no change when nothing changed. What it cannot see: a
file rewritten with the same size and the same mtime keeps its old digest; ``byol scan
--force`` reads every file again.

What is listed follows the image-folder reader (:func:`byol_core.data.sources.imagefolder.list_images`):
regular files at any depth, symlinks to files followed, symlinked folders not (no loops),
dotfiles and dot-folders left out, FIFOs, sockets and devices passed over (opening a FIFO
blocks). A file that cannot be read (a dangling link, no permission) is listed without a digest
(a dangling link with size -1), so that ingest reports it as ``data.on_corrupt`` says.

The columns, in path order (folder by folder: a folder's entries by name, a subfolder's files
at its place):

  ``path``    POSIX path below ``data.source_dir``; bytes that are not UTF-8 as backslash
              escapes, as in the manifest
  ``size``    bytes (-1: a link to nothing)
  ``digest``  BLAKE2b-128 of the contents, 16 bytes (``b2sum -l 128`` prints it in hex);
              null: the file cannot be read

From the walk on, the files are columns (flat buffers, then Arrow and numpy arrays), never a
Python object per file, and the Parquet bytes are streamed through md5 rather than held: a
million files scan in about 150 MiB.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import signal
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from byol_core import progress
from byol_core.data import walk as walking
from byol_core.errors import ByolError, printable
from byol_core.io.storage import atomic_write

DIGEST_BYTES = 16
LISTING = pa.schema([("path", pa.string()), ("size", pa.int64()), ("digest", pa.binary(DIGEST_BYTES))])
SIDE_FOLDER = "scan"  # the side cache's folder in paths.cache
READ_BATCH = 256  # files per reading task
READERS = 4  # reading threads: reads and hashing release the GIL, and a cold disk likes company
REPORT_EVERY = 10.0  # seconds between progress lines while files are read
# Fixed, so the same rows give the same bytes. Paths are unique: a dictionary only costs memory.
_PARQUET = {"compression": "zstd", "use_dictionary": False, "write_statistics": False,
            "row_group_size": 1 << 20, "data_page_size": 1 << 16}
Reader = Callable[[str, int, int], tuple["bytes | None", int, int]]


def _int64(values: np.ndarray) -> pa.Array:
    """An int64 Arrow array on ``values``' memory (``pa.array`` would import pandas to look)."""
    values = np.ascontiguousarray(values, dtype=np.int64)
    return pa.Array.from_buffers(pa.int64(), len(values), [None, pa.py_buffer(values)])


def _mask(values: np.ndarray) -> pa.Array:
    """A boolean Arrow array of ``values`` (numpy bool)."""
    return pa.Array.from_buffers(pa.bool_(), len(values), [None, pa.py_buffer(np.packbits(values, bitorder="little"))])


# --- the walk ----------------------------------------------------------------------------------


@dataclass
class Walked:
    """The files of a folder in listing order: ``paths`` (Arrow strings), ``sizes`` and
    ``mtimes`` (int64, -1 for a link to nothing), and ``odd``: for the rare names that are not
    UTF-8, their listed form -> the real relative path."""

    paths: pa.Array
    sizes: np.ndarray
    mtimes: np.ndarray
    odd: dict[str, str]
    folder_links: int = 0  # symlinks to folders passed over (the image-folder reader follows them)
    folders: list[tuple[str, int]] | None = None  # (path below the folder, "" for itself; its mtime in ns)

    def __len__(self) -> int:
        return len(self.sizes)

    def keep(self, rows: np.ndarray) -> Walked:
        return Walked(self.paths.filter(_mask(rows)), self.sizes[rows], self.mtimes[rows], self.odd,
                      self.folder_links, self.folders)

    def path_buffers(self) -> tuple[np.ndarray, memoryview]:
        """The paths as (int64 offsets from 0, their UTF-8 bytes back to back)."""
        if not len(self):
            return np.zeros(1, dtype=np.int64), memoryview(b"")
        width = np.int32 if pa.types.is_string(self.paths.type) else np.int64
        offsets = np.frombuffer(self.paths.buffers()[1], dtype=width)[self.paths.offset:][:len(self) + 1]
        data = self.paths.buffers()[2]
        return (offsets - offsets[0]).astype(np.int64), memoryview(data or b"")[offsets[0]:offsets[-1]]

    def paths_md5(self) -> bytes:
        """A digest of the paths in order: equal digests, equal rows."""
        offsets, data = self.path_buffers()
        digest = hashlib.md5(offsets.tobytes())
        digest.update(data)
        return digest.digest()


def walk(folder: Path, workers: int | None = None, parallel_from: int = walking.PARALLEL_FROM) -> Walked:
    """Every file below ``folder`` in listing order (a folder's entries by name, a subfolder's
    files at its place), as flat buffers: only the names of the folders being read are Python
    objects at any time. A large folder is walked by one worker process per core
    (:mod:`byol_core.data.walk`, which says how)."""
    mtime, parts = walking.walk(os.fspath(folder), workers, parallel_from)
    n = sum(len(part.ends) for part in parts)
    size = sum(len(part.names) for part in parts)
    offsets = np.zeros(n + 1, dtype=np.int32 if size < 2**31 else np.int64)
    sizes, mtimes = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
    odd, folder_links, folders, row, base = {}, 0, [("", mtime)], 0, 0
    for part in parts:
        count = len(part.ends)
        if count:
            offsets[row + 1:row + 1 + count] = np.frombuffer(part.ends, dtype=np.int64) + base
            sizes[row:row + count] = np.frombuffer(part.sizes, dtype=np.int64)
            mtimes[row:row + count] = np.frombuffer(part.mtimes, dtype=np.int64)
        row, base = row + count, base + len(part.names)
        odd.update(part.odd)
        folder_links += part.folder_links
        folders += part.folders
    names = parts[0].names if len(parts) == 1 else b"".join(part.names for part in parts)
    kind = pa.string() if offsets.dtype == np.int32 else pa.large_string()
    paths = pa.Array.from_buffers(kind, n, [None, pa.py_buffer(offsets), pa.py_buffer(names)])
    if odd:
        _refuse_twins(paths, odd)
    return Walked(paths, sizes, mtimes, odd, folder_links, folders)


def _refuse_twins(paths: pa.Array, odd: dict[str, str]) -> None:
    """Two names that show alike: one with bytes that are not UTF-8, one with their escapes."""
    twins = paths.filter(pc.is_in(paths, value_set=pa.array(list(odd), paths.type)))
    if len(twins) > len(odd):
        counts = pc.value_counts(twins)
        name = counts.field("values").filter(pc.greater(counts.field("counts"), 1))[0].as_py()
        raise ByolError(f"two files in data.source_dir are both listed as '{name}' (one name holds bytes that are "
                        "not UTF-8, the other their backslash escape). Rename one of them.")


# --- the side cache ----------------------------------------------------------------------------
#
# One .npz per source folder (numpy arrays in an uncompressed zip, whose CRC-32s are checked
# as each array is read): ``size``, ``mtime_ns``, ``digest`` (uint8 (n, DIGEST_BYTES)), the
# paths as ``path_offsets`` and ``path_data``, and ``paths_md5``, the md5 of the paths in order.
# Each array is read into one allocation of its own size, and the paths are read only when
# the walk found other paths than the last one did.


def side_cache(cache_dir: Path, folder: Path) -> Path:
    """The side cache of ``folder``: one file per source folder, named by its absolute path."""
    key = hashlib.blake2b(os.fsencode(Path(folder).absolute()), digest_size=8).hexdigest()
    return Path(cache_dir) / SIDE_FOLDER / f"{key}.npz"


def _side_paths(side: np.lib.npyio.NpzFile) -> pa.Array:
    """The side cache's paths, as an Arrow column on its arrays' memory."""
    offsets, data = side["path_offsets"], side["path_data"]
    return pa.Array.from_buffers(pa.large_string(), len(offsets) - 1, [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def _match(walked: Walked, kept: Path) -> tuple[np.ndarray, np.ndarray, int]:
    """(digests uint8 (n, DIGEST_BYTES), known bool (n,), rows in the side cache): the side
    cache's digest of each walked file whose path, size and mtime it holds. When the walk
    found the same paths as the last one (nothing added or removed, the usual case), the
    side cache's rows are the walk's, and its paths are not even read."""
    n = len(walked)
    digests = np.zeros((n, DIGEST_BYTES), dtype=np.uint8)
    known = np.zeros(n, dtype=bool)
    if not n or not kept.is_file():
        return digests, known, 0
    try:
        with np.load(kept, allow_pickle=False) as side:
            if side["paths_md5"].tobytes() == walked.paths_md5():
                where = None  # row for row
            else:
                seen = _side_paths(side)
                where = _rows_in(walked.paths, seen)
                del seen
            sizes, mtimes, seen_digests = side["size"], side["mtime_ns"], side["digest"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, pa.ArrowException) as exc:
        progress.report(f"scan: the side cache {kept} cannot be read ({type(exc).__name__}); every file is read again")
        return digests, known, 0
    if len(sizes) != len(mtimes) or seen_digests.shape != (len(sizes), DIGEST_BYTES) or \
            (where is None and len(sizes) != n):
        progress.report(f"scan: the side cache {kept} is inconsistent; every file is read again")
        return digests, known, 0
    if where is None:
        known = (sizes == walked.sizes) & (mtimes == walked.mtimes)
        seen_digests[~known] = 0
        return seen_digests, known, len(sizes)
    hit = np.flatnonzero(where >= 0)
    at = where[hit]
    same = (sizes[at] == walked.sizes[hit]) & (mtimes[at] == walked.mtimes[hit])
    digests[hit[same]] = seen_digests[at[same]]
    known[hit[same]] = True
    return digests, known, len(sizes)


def _listing_key(path: str) -> str:
    """Sorts as the listing does: a folder's files at its place (by name), as if "/" were
    the lowest character."""
    return path.replace("/", "\0")


LOOKUP_ROWS = 1 << 16  # walked paths looked up at a time in the side cache's


def _rows_in(paths: pa.Array, seen: pa.Array) -> np.ndarray:
    """Each of ``paths``' row in ``seen``, or -1. Both are in listing order, so the rows of
    ``seen`` that can hold a run of ``paths`` lie between two bisections: each run of
    LOOKUP_ROWS is looked up in a hash table over those rows only. One table over a million
    paths cost about 90 MiB; these cost a run's worth. (A name that is not UTF-8 is listed
    by its escape, which may sort elsewhere: a bound that misses it only means that file is
    read again.)"""
    where = np.full(len(paths), -1, dtype=np.int64)

    def key(path: pa.StringScalar) -> str:
        return _listing_key(path.as_py())

    for start in range(0, len(paths), LOOKUP_ROWS):
        run = paths.slice(start, LOOKUP_ROWS)
        lo = bisect.bisect_left(seen, _listing_key(run[0].as_py()), key=key)
        hi = bisect.bisect_right(seen, _listing_key(run[-1].as_py()), lo, key=key)
        if hi > lo:
            found = pc.fill_null(pc.index_in(run, value_set=seen.slice(lo, hi - lo)), -1).to_numpy()
            where[start:start + len(run)] = np.where(found >= 0, found + lo, -1)
    return where


def _save_seen(kept: Path, walked: Walked, digests: np.ndarray, known: np.ndarray) -> None:
    """The side cache: the walk's rows that have a digest."""
    if not known.all():
        walked, digests = walked.keep(known), digests[known]
    offsets, data = walked.path_buffers()
    arrays = {"size": walked.sizes, "mtime_ns": walked.mtimes, "digest": digests, "path_offsets": offsets,
              "path_data": np.frombuffer(data, dtype=np.uint8),
              "paths_md5": np.frombuffer(walked.paths_md5(), dtype=np.uint8)}

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)

    atomic_write(kept, write)


# --- reading -----------------------------------------------------------------------------------


GONE, UNREADABLE = -2, -3  # what reading found instead of a size: removed since the walk; cannot be opened


def _blake2b() -> hashlib.blake2b:
    return hashlib.blake2b(digest_size=DIGEST_BYTES)


def read_digest(path: str, size: int, mtime: int) -> tuple[bytes | None, int, int]:
    """(digest, size, mtime_ns) of the file at ``path``, which the walk saw with ``size`` and
    ``mtime``. The digest is kept only when the file's size and mtime after reading are still
    those it was read under; otherwise it is read again under its new ones. None and GONE or
    UNREADABLE instead of a size when it cannot be read."""
    for _ in range(3):
        try:
            with open(path, "rb") as handle:
                digest = hashlib.file_digest(handle, _blake2b).digest()
                info = os.fstat(handle.fileno())
        except FileNotFoundError:
            return None, GONE, mtime
        except OSError:
            return None, UNREADABLE, mtime
        if (info.st_size, info.st_mtime_ns) == (size, mtime):
            return digest, size, mtime
        size, mtime = info.st_size, info.st_mtime_ns
    raise ByolError(f"{printable(path)}: changed while it was read, three times over. Wait until it is written in "
                    "full, then scan again.")


def _batches(todo: np.ndarray) -> Iterator[np.ndarray]:
    for start in range(0, len(todo), READ_BATCH):
        yield todo[start:start + READ_BATCH]


def _read(folder: Path, walked: Walked, todo: np.ndarray, digests: np.ndarray, known: np.ndarray,
          reader: Reader) -> np.ndarray:
    """Read the files at rows ``todo``, filling ``digests`` and ``known`` and setting the walk's
    sizes and mtimes to those they were read under; returns which rows are still there (a
    file removed since the walk is not listed). An unreadable file keeps what the walk saw."""
    present = np.ones(len(walked), dtype=bool)
    root = os.fspath(folder)

    def job(rows: np.ndarray) -> list[tuple[int, bytes | None, int, int]]:
        done = []
        for i in rows.tolist():
            name = walked.paths[i].as_py()
            done.append((i, *reader(os.path.join(root, walked.odd.get(name, name)), int(walked.sizes[i]),
                                    int(walked.mtimes[i]))))
        return done

    started = last = time.monotonic()
    count = 0
    with ThreadPoolExecutor(READERS if len(todo) > READ_BATCH else 1) as pool:
        for done in pool.map(job, _batches(todo)):
            for i, digest, size, mtime in done:
                if size == GONE:
                    present[i] = False
                elif size != UNREADABLE:
                    walked.sizes[i], walked.mtimes[i] = size, mtime
                if digest is not None:
                    digests[i] = np.frombuffer(digest, dtype=np.uint8)
                    known[i] = True
            count += len(done)
            if time.monotonic() - last > REPORT_EVERY:
                last = time.monotonic()
                progress.report(f"scan: read {count} of {len(todo)} new or changed files "
                                f"({count / (last - started):.0f} files/s)")
    return present


# --- the listing -------------------------------------------------------------------------------


class _Through:
    """A write-only file that hashes what is written to it and passes it on to ``out``."""

    def __init__(self, out: BinaryIO | None = None):
        self.md5, self.out, self.written, self.closed = hashlib.md5(), out, 0, False

    def write(self, data) -> int:
        self.md5.update(data)
        if self.out is not None:
            self.out.write(data)
        self.written += len(data)
        return len(data)

    def tell(self) -> int:
        return self.written

    def flush(self) -> None:
        if self.out is not None:
            self.out.flush()

    def close(self) -> None:
        self.closed = True


def write_parquet(table: pa.Table, out: BinaryIO | None = None) -> str:
    """Stream ``table`` as Parquet (to ``out``, if given) and return the bytes' md5. One chunk
    per column and fixed options, so the same rows give the same bytes."""
    if any(column.num_chunks != 1 for column in table.columns):
        table = table.combine_chunks()
    through = _Through(out)
    pq.write_table(table, pa.PythonFile(through, mode="w"), **_PARQUET)
    return through.md5.hexdigest()


class FileIndex:
    """The files one walk found below ``data.source_dir``, for the image-folder reader to take
    instead of walking the folder a second time (:func:`byol_core.data.sources.imagefolder.list_images`):
    at a million files a walk costs seconds of ``stat`` calls and Python objects. Paths are the
    real ones (not their printable form), with the size and mtime the scan saw them with."""

    def __init__(self, walked: Walked):
        names = walked.paths.to_pylist()
        self.paths = [walked.odd.get(name, name) for name in names] if walked.odd else names
        self.sizes, self.mtimes = walked.sizes.tolist(), walked.mtimes.tolist()

    def below(self, folder: str) -> list[tuple[str, int, int]]:
        """(path, size, mtime in ns) of every listed file below ``folder`` (a POSIX path below
        the walked folder; "" for all of them), sorted by path. The listing order is that of
        the paths with "/" read as the lowest character, so a folder's files are one run of
        rows, found by bisection."""
        lo, hi = 0, len(self.paths)
        if folder:
            start = _listing_key(folder)
            lo = bisect.bisect_left(self.paths, start + "\0", key=_listing_key)
            hi = bisect.bisect_left(self.paths, start + "\1", lo, key=_listing_key)
        return sorted(zip(self.paths[lo:hi], self.sizes[lo:hi], self.mtimes[lo:hi]))


class Listing:
    """One scan's result: the listing (``path``, ``size``, ``digest`` in listing order), and
    ``md5``, that of its Parquet file (what ``dvc.lock`` records for it)."""

    def __init__(self, table: pa.Table, read: int, seconds: float, walked: Walked | None = None):
        self.table, self.read, self.seconds = table, read, seconds  # read: files read this time
        self.md5 = write_parquet(table)
        self._walked = walked

    def file_index(self) -> FileIndex | None:
        """The walk's files for the image-folder reader; None when the walk passed over a
        symlinked folder, which the reader follows (it would find more files than listed)."""
        if self._walked is None or self._walked.folder_links:
            return None
        return FileIndex(self._walked)

    @property
    def files(self) -> int:
        return self.table.num_rows

    @property
    def bytes(self) -> int:
        sizes = self.table["size"].to_numpy()
        return int(sizes[sizes > 0].sum())

    def write(self, path: Path) -> None:
        """Write the listing to ``path`` atomically (temp file, fsync, rename)."""
        def write(tmp: Path) -> None:
            with open(tmp, "wb") as handle:
                if write_parquet(self.table, handle) != self.md5:
                    raise RuntimeError("the Parquet writer gave other bytes for the same listing")

        atomic_write(path, write)


def scan(folder: Path, cache_dir: Path, force: bool = False, reader: Reader | None = None) -> Listing:
    """List ``folder`` (a missing folder lists nothing), reading only the files the side cache in
    ``cache_dir`` does not know under their path, size and mtime (every file when ``force``),
    and update the side cache. ``reader(path, size, mtime)`` reads one file (default:
    :func:`read_digest`)."""
    started = time.perf_counter()
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ByolError(f"data.source_dir {folder} is a file, not a folder. Point it at the folder of the source's "
                        "files.")
    walked = walk(folder) if folder.is_dir() else Walked(pa.array([], pa.string()), np.zeros(0, np.int64),
                                                         np.zeros(0, np.int64), {})
    kept = side_cache(cache_dir, folder)
    if force:
        n = len(walked)
        digests, known, seen_rows = np.zeros((n, DIGEST_BYTES), dtype=np.uint8), np.zeros(n, dtype=bool), 0
    else:
        digests, known, seen_rows = _match(walked, kept)
    todo = np.flatnonzero(~known & (walked.sizes >= 0))
    if len(todo):
        present = _read(folder, walked, todo, digests, known, reader or read_digest)
        if not present.all():
            walked, digests, known = walked.keep(present), digests[present], known[present]
    if len(todo) or int(known.sum()) != seen_rows:
        _save_seen(kept, walked, digests, known)
    validity = None if known.all() else pa.py_buffer(np.packbits(known, bitorder="little"))
    column = pa.Array.from_buffers(pa.binary(DIGEST_BYTES), len(walked),
                                   [validity, pa.py_buffer(np.ascontiguousarray(digests))])
    table = pa.table([walked.paths.cast(pa.string()), _int64(walked.sizes), column], schema=LISTING)
    listing = Listing(table, len(todo), time.perf_counter() - started, walked)
    _save_record(kept, listing.md5, walked, complete=bool(known.all()))
    return listing


# --- the scan's record: what ingest needs to trust it without walking again -------------------
#
# Beside the side cache, each scan writes a small JSON record: the md5 of the listing it made,
# the mtime of every folder it walked, and the md5 of the side cache's paths. Adding, removing
# or renaming a file changes its folder's mtime; so when the listing ingest is given is that
# md5 and no walked folder's mtime moved, the side cache's rows (path, size, mtime) are the
# folder as the listing saw it, and ingest takes them instead of walking a million files
# again. The record is written only when the side cache holds every walked file (no unread or
# unreadable one), no symlinked folder was passed over and no name needed escaping.


def _record_path(kept: Path) -> Path:
    return kept.with_suffix(".json")


def _save_record(kept: Path, listing_md5: str, walked: Walked, complete: bool) -> None:
    record = _record_path(kept)
    if not complete or walked.folder_links or walked.odd or walked.folders is None:
        record.unlink(missing_ok=True)
        return
    text = json.dumps({"listing_md5": listing_md5, "files": len(walked), "paths_md5": walked.paths_md5().hex(),
                       "folders": walked.folders})
    try:
        atomic_write(record, lambda tmp: tmp.write_text(text))
    except OSError:  # only a shortcut: without it, ingest walks the folder
        record.unlink(missing_ok=True)


def unchanged_index(listing: Path, folder: Path, cache_dir: Path) -> FileIndex | None:
    """The files of ``folder`` as the scan that wrote ``listing`` saw them, without walking it,
    when its record shows that nothing was added, removed or renamed in any of its folders
    since (their mtimes): None when that cannot be told, and the caller walks.

    A file rewritten in place since the scan is not seen here (its folder's mtime stays): its
    pixels come from the conversion cache as they were when listed, so the prepared data is
    still what the listing names; a file that must be converted is checked against its listed
    size and mtime first (:func:`byol_core.data.filesplit.resolve`)."""
    kept = side_cache(cache_dir, folder)
    try:
        record = json.loads(_record_path(kept).read_text())
        if record["listing_md5"] != _file_md5(listing):
            return None
        for name, mtime in record["folders"]:
            if os.stat(Path(folder) / name).st_mtime_ns != mtime:  # as the walk opened it (a linked root followed)
                return None
        with np.load(kept, allow_pickle=False) as side:
            if side["paths_md5"].tobytes().hex() != record["paths_md5"]:
                return None
            walked = Walked(_side_paths(side), side["size"], side["mtime_ns"], {})
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile, pa.ArrowException):
        return None
    if len(walked) != record["files"] or len(walked.mtimes) != len(walked):
        return None
    return FileIndex(walked)


# --- checking a folder against its listing -----------------------------------------------------


def read_listing(path: Path) -> pa.Table:
    """The listing at ``path`` (written by ``byol scan``)."""
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise ByolError(f"{path}: cannot be read as a source listing ({type(exc).__name__}). Run `byol scan` to "
                        "write it again.") from None
    if not table.schema.remove_metadata().equals(LISTING):
        raise ByolError(f"{path}: not a source listing (its columns are {', '.join(table.schema.names)}, not path, "
                        "size, digest). Run `byol scan` to write it again.")
    return table


def _names(column: pa.Array | pa.ChunkedArray, limit: int = 3) -> str:
    shown = ", ".join(column.slice(0, limit).to_pylist())
    return shown + (", ..." if len(column) > limit else "")


def differences(declared: pa.Table, current: pa.Table) -> dict[str, pa.ChunkedArray]:
    """The paths ``added`` to, ``removed`` from and ``changed`` (size or digest) in ``current``
    against ``declared``, each in listing order."""
    where = pc.index_in(current["path"], value_set=declared["path"].combine_chunks())
    added = current["path"].filter(pc.is_null(where))
    removed = declared["path"].filter(pc.invert(pc.is_in(declared["path"], value_set=current["path"].combine_chunks())))
    both = current.filter(pc.is_valid(where))
    before = declared.take(where.drop_null())
    digest_same = pc.if_else(pc.and_(pc.is_null(both["digest"]), pc.is_null(before["digest"])), True,
                             pc.fill_null(pc.equal(both["digest"], before["digest"]), False))
    changed = both["path"].filter(pc.invert(pc.and_(pc.equal(both["size"], before["size"]), digest_same)))
    return {"added": added, "removed": removed, "changed": changed}


def _file_md5(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "md5").hexdigest()


def check(listing: Path, folder: Path, cache_dir: Path) -> Listing:
    """Scan ``folder`` and refuse to go on unless it is what ``listing`` says, so that a stage
    reads the files its declared input names. A changed file is named with what to do."""
    if not listing.is_file():
        raise ByolError(f"{listing} (paths.listing) is missing. Run `byol scan` first; `dvc repro` runs it "
                        "before ingest.")
    now = scan(folder, cache_dir)
    if now.md5 == _file_md5(listing):
        return now
    declared = read_listing(listing)
    if declared.equals(now.table):  # written by another version of the Parquet writer
        return now
    found = differences(declared, now.table)
    parts = [f"{len(paths)} {kind} ({_names(paths)})" for kind, paths in found.items() if len(paths)]
    raise ByolError(f"data.source_dir {folder} changed since {listing} was written: {'; '.join(parts)}. Run `byol "
                    "scan` to list it as it is now (`dvc repro` runs scan before ingest), then ingest again.")


def _observe(argv: list[str]) -> int:
    """``python -m byol_core.data.scan FOLDER CACHE``: scan FOLDER (side cache in CACHE) without
    writing a listing, and print ``{"md5", "files", "bytes"}`` as one JSON line. Dagster's
    observation runs this in a process of its own, so that the long-lived code location does
    not carry a million-file scan's memory; an error is printed alone, exit status 1."""
    from byol_core.io.proc import die_with_parent  # here: the scan stage itself never needs it

    die_with_parent(signal.SIGTERM, os.getppid())
    try:
        listing = scan(Path(argv[0]), Path(argv[1]))
    except ByolError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(json.dumps({"md5": listing.md5, "files": listing.files, "bytes": listing.bytes}))
    return 0


if __name__ == "__main__":
    sys.exit(_observe(sys.argv[1:]))
