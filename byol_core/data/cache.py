"""The conversion cache: image files already converted, so re-ingesting converts only new ones.

Lives outside every DVC output (``paths.cache``), one folder per conversion
(``images-{C}x{S}-v{VERSION}``: channels, size and the converter's version), holding

  ``pack-*.u8``     converted images, uint8 (C, S, S) rows back to back; each ingest
                    appends to a pack of its own, so two never write one file
  ``index.sqlite``  one row per source file: its POSIX path below ``data.source_dir`` (bytes), size
                    and mtime (ns), where its pixels are (pack, row) and their digest, or why
                    it could not be used (kind, problem), and the generation that wrote it (a
                    counter each write moves on); and one row per prepared shard made of
                    image files: which files (a fingerprint), where it was published with
                    its size and mtime, and its digests and channel sums, so a re-ingest
                    links an unchanged shard instead of rebuilding it
  ``index.parquet``  the file rows as of one generation, as columns: a lookup reads it and
                    only the rows written since from SQLite, and matches a million listed
                    files in one Arrow hash join instead of a million SQLite lookups; rewritten
                    when an ingest added rows. Only ever a copy: SQLite is what is true
  ``shards-*/``     a hard link to each shard the last ingest into one prepared folder
                    published (one folder per prepared folder), named by its fingerprint: DVC
                    deletes a stage's outputs before it runs the stage, so without these a
                    ``dvc repro`` after one new file would rebuild every shard from the packs.
                    A shard's row keeps its md5: where DVC's cache holds the same bytes
                    (:func:`dvc_object`), the shard is linked from there, and the link kept
                    here then shares DVC's copy instead of holding one more

A file whose path, size and mtime all match a row is taken from the cache; anything else is
converted again. Rows are committed only after their pixels are on disk (written and
fsynced first), so a killed ingest leaves at worst unreferenced bytes at a pack's end.

Each entry's digest (:func:`byol_core.data.store.image_digest`) is taken from the pixels in memory
as they are written, so bytes that change later in a pack (a flipped bit, a cut file) are
found when they are read back (byol_core.data.filesplit) and converted again rather than passed
on; ``byol verify`` checks every entry (byol_core.verify). An entry without a digest (kept
before digests were) is treated as absent: it is converted again, as a damaged one would be.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from byol_core.errors import ByolError
from byol_core.io.storage import atomic_write
from byol_core.data.store import DIGEST_BYTES, Shard, ShardedImages, image_digest

VERSION = 1  # bump when conversion changes what a file becomes
UNKNOWN, OK, BAD = 0, 1, 2
_SCHEMA = """
CREATE TABLE IF NOT EXISTS packs (id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL, rows INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime INTEGER NOT NULL,
                                  pack INTEGER, row INTEGER, kind TEXT, problem TEXT, digest BLOB);
CREATE TABLE IF NOT EXISTS generation (n INTEGER NOT NULL);
INSERT INTO generation SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM generation);
CREATE TABLE IF NOT EXISTS shards (fingerprint TEXT PRIMARY KEY, path BLOB NOT NULL, size INTEGER NOT NULL,
                                   mtime INTEGER NOT NULL, count INTEGER NOT NULL, digests BLOB NOT NULL,
                                   sums TEXT NOT NULL);
"""
SNAPSHOT = "index.parquet"
_COLUMNS = "path, size, mtime, pack, row, kind, problem, digest"  # a file row as the snapshot holds it
_SNAPSHOT = pa.schema([("path", pa.binary()), ("size", pa.int64()), ("mtime", pa.int64()), ("pack", pa.int64()),
                       ("row", pa.int64()), ("kind", pa.string()), ("problem", pa.string()), ("digest", pa.binary())])
FOLDER = re.compile(r"images-(\d+)x(\d+)-v(\d+)")  # one conversion's folder: channels, size, version


def _key(path: str) -> bytes:
    """A path as the index stores it: its bytes, so names that are not UTF-8 work too."""
    return path.encode("utf-8", "surrogateescape")


def _keys(paths: tuple[str, ...]) -> pa.Array:
    """:func:`_key` of each path, as one Arrow column (UTF-8 names, the usual case, without a
    Python bytes object each)."""
    try:
        return pa.array(paths, pa.string()).cast(pa.binary())
    except (UnicodeEncodeError, pa.ArrowException):  # a name that is not UTF-8 (surrogate escapes)
        return pa.array([_key(p) for p in paths], pa.binary())


def _rows_of(keys: pa.Array, column: pa.ChunkedArray) -> np.ndarray:
    """Each key's row in ``column`` (int64), or -1."""
    return pc.index_in(keys, value_set=column.combine_chunks()).fill_null(-1).to_numpy(
        zero_copy_only=False).astype(np.int64)


@dataclass
class Found:
    """What the index knows of each listed file (see :meth:`ConversionCache.lookup`)."""

    status: np.ndarray  # (n,) int8: UNKNOWN, OK or BAD
    where: np.ndarray  # (n, 2) int64: an OK file's (pack id, row), for :meth:`ConversionCache.images`; else -1
    digests: np.ndarray  # (n, DIGEST_BYTES) uint8: the digest stored with an OK file's pixels
    problems: dict[int, tuple[str, str]]  # {i: (kind, problem)} of the BAD files
    lost: np.ndarray  # (n,) bool: its pixels were cut from their pack, or the pack is gone (now UNKNOWN)


def _add_column(db: sqlite3.Connection, table: str, column: str, kind: str) -> None:
    """Give a cache made before ``column`` was kept that column (empty in its rows). Columns
    added so far: ``files.digest`` (an entry without one is converted again as it is met: a bit
    that flipped before cannot be told), ``files.gen`` (rows without one are read when there is
    no snapshot yet) and ``shards.md5``."""
    if column in {row[1] for row in db.execute(f"PRAGMA table_info({table})")}:
        return
    try:
        db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
    except sqlite3.OperationalError:  # another ingest added it first
        if column not in {row[1] for row in db.execute(f"PRAGMA table_info({table})")}:
            raise


def dvc_object(md5: str | None, size: int) -> Path | None:
    """The file of this md5 and size in the DVC cache of the repository whose stage is running
    (DVC names the repository in ``DVC_ROOT`` for a stage's command; DVC 3 keeps a file of md5
    ``m`` at ``.dvc/cache/files/md5/m[:2]/m[2:]``), if there is one. A shard linked from there
    is the inode DVC's state already hashed and its cache already holds, so DVC neither hashes
    it again nor copies it; a cache kept elsewhere (``cache.dir``) is simply not found."""
    root = os.environ.get("DVC_ROOT")
    if not md5 or not root or len(md5) != 32:
        return None
    path = Path(root) / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
    try:
        info = os.stat(path)
    except OSError:
        return None
    return path if stat.S_ISREG(info.st_mode) and info.st_size == size else None


def _read_snapshot(path: Path) -> tuple[pa.Table, int]:
    """The snapshot's rows and the generation they are as of; none (generation -1) when it is
    missing or unreadable: it is only a copy of the index, so it is then built again."""
    try:
        table = pq.read_table(path)
        generation = int(table.schema.metadata[b"generation"])
        if table.schema.remove_metadata().equals(_SNAPSHOT):
            return table.replace_schema_metadata(None), generation
    except (OSError, KeyError, ValueError, TypeError, pa.ArrowException):
        pass
    return _SNAPSHOT.empty_table(), -1


def readable_rows(folder: Path, row_bytes: int, packs: list[tuple[int, str, int]]) -> dict[int, int]:
    """Pack id -> how many of its committed rows its file still holds (fewer if it was cut)."""
    readable = {}
    for pack_id, name, rows in packs:
        try:
            size = os.stat(folder / name).st_size
        except OSError:
            size = 0
        readable[pack_id] = min(rows, size // row_bytes)
    return readable


def _place(found: Found, i: np.ndarray, hits: pa.Table, readable: dict[int, int]) -> None:
    """Fill ``found`` from the index rows ``hits`` (a snapshot's columns) that listed files ``i``
    matched, column by column: a row with a kind is BAD; one without a digest (kept before
    digests were) stays UNKNOWN, to be converted again; one whose pixels its pack still holds
    is OK; the rest were cut from their pack (``lost``)."""
    if not len(i):
        return
    kind, problem, digest = (hits[name].combine_chunks() for name in ("kind", "problem", "digest"))
    bad = kind.is_valid().to_numpy(zero_copy_only=False)
    for j in np.flatnonzero(bad).tolist():
        found.status[i[j]] = BAD
        found.problems[int(i[j])] = (kind[j].as_py(), problem[j].as_py())
    good = ~bad & pc.fill_null(pc.equal(pc.binary_length(digest), DIGEST_BYTES), False).to_numpy(zero_copy_only=False)
    if not good.any():
        return
    at = i[good]
    packs, rows = (hits[name].combine_chunks().filter(good).fill_null(-1).to_numpy() for name in ("pack", "row"))
    limit = np.zeros(max(readable, default=0) + 2, dtype=np.int64)  # by pack id; 0 for a pack not held
    limit[list(readable)] = list(readable.values())
    held = (packs >= 0) & (rows >= 0) & (rows < limit[np.clip(packs, 0, len(limit) - 1)])
    found.lost[at[~held]] = True
    kept = digest.filter(good).filter(held).cast(pa.binary(DIGEST_BYTES))
    at, packs, rows = at[held], packs[held], rows[held]
    found.status[at] = OK
    found.where[at, 0], found.where[at, 1] = packs, rows
    values = np.frombuffer(kept.buffers()[1], dtype=np.uint8)
    found.digests[at] = values[kept.offset * DIGEST_BYTES:(kept.offset + len(kept)) * DIGEST_BYTES].reshape(
        -1, DIGEST_BYTES)


class ConversionCache:
    def __init__(self, root: Path, channels: int, size: int):
        self.folder = Path(root) / f"images-{channels}x{size}-v{VERSION}"
        self.image_shape = (channels, size, size)
        self.row_bytes = channels * size * size
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.folder / "index.sqlite", timeout=60, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(_SCHEMA)
            for table, column, kind in (("files", "digest", "BLOB"), ("files", "gen", "INTEGER"),
                                        ("shards", "md5", "TEXT")):
                _add_column(self.db, table, column, kind)
        except (OSError, sqlite3.Error) as exc:
            raise ByolError(f"conversion cache {self.folder}: cannot open it ({exc}). Point paths.cache at a "
                            "writable folder, or delete that folder to start the cache afresh.") from None
        self._pack: tuple[int, object] | None = None  # (id, open file) of this process's pack
        self._pack_rows = 0
        self._known: pa.Table | None = None  # the file rows as of generation self._generation
        self._generation = -1
        self._recent = 0  # how many of self._known's first rows the last catch-up brought in
        self._snapshot_generation = -1  # what the snapshot file holds
        self.published: set[str] = set()  # fingerprints of the shards this ingest publishes
        self.reconverted = 0  # damaged entries converted again in this run (byol_core.data.filesplit counts them)

    def close(self) -> None:
        if self._pack is not None:
            self._pack[1].close()
            self._pack = None
        if self._known is not None:
            try:
                self._catch_up()
                if self._generation != self._snapshot_generation:
                    self._write_snapshot()
            except (OSError, sqlite3.Error, pa.ArrowException):  # only a copy: the next lookup reads SQLite
                pass
        self.db.close()

    def _catch_up(self) -> None:
        """Bring the in-memory rows up to the index's generation: the snapshot file's rows
        (on the first call), then the rows SQLite wrote since, which replace older ones."""
        if self._known is None:
            self._known, self._generation = _read_snapshot(self.folder / SNAPSHOT)
            self._snapshot_generation = self._generation
        self.db.execute("BEGIN")  # one read: the rows and the generation they are as of
        try:
            (now,) = self.db.execute("SELECT n FROM generation").fetchone()
            if now == self._generation:
                return
            newer = self.db.execute(f"SELECT {_COLUMNS} FROM files WHERE ? < 0 OR gen > ?",
                                    (self._generation, self._generation)).fetchall()
        finally:
            self.db.execute("COMMIT")
        self._recent = len(newer)
        if newer:
            fresh = pa.table([pa.array(column, type=field.type) for column, field in zip(zip(*newer), _SNAPSHOT)],
                             schema=_SNAPSHOT)
            older = self._known.filter(pc.invert(pc.is_in(self._known["path"], value_set=fresh["path"])))
            self._known = pa.concat_tables([fresh, older]).combine_chunks()
        self._generation = now

    def _write_snapshot(self) -> None:
        table = self._known.replace_schema_metadata({"generation": str(self._generation)})
        atomic_write(self.folder / SNAPSHOT, lambda tmp: pq.write_table(table, tmp, compression="lz4"))
        self._snapshot_generation = self._generation

    def lookup(self, files: list[tuple[str, int, int]]) -> Found:
        """What the index knows of each (path, size, mtime_ns). An entry without a digest, or
        whose pixels are no longer in its pack, is UNKNOWN: it is converted again."""
        n = len(files)
        found = Found(np.zeros(n, dtype=np.int8), np.full((n, 2), -1, dtype=np.int64),
                      np.zeros((n, DIGEST_BYTES), dtype=np.uint8), {}, np.zeros(n, dtype=bool))
        if not n:
            return found
        try:
            self._catch_up()
        except sqlite3.Error as exc:
            raise ByolError(f"conversion cache {self.folder}: cannot read its index ({exc}). Delete that folder "
                            "to start the cache afresh.") from None
        paths, sizes, mtimes = (list(map(itemgetter(k), files)) for k in range(3))  # zip(*files) is 5x slower
        keys = _keys(paths)
        # the rows caught up last come first in self._known: files just converted (the lookup
        # that follows a conversion) are found among them, without a hash table over every row
        known = self._known["path"]
        at = _rows_of(keys, known.slice(0, self._recent))
        rest = np.flatnonzero(at < 0)
        if len(rest) and self._recent < len(known):
            more = _rows_of(keys.take(rest), known.slice(self._recent))
            at[rest] = np.where(more >= 0, more + self._recent, -1)
        listed = np.flatnonzero(at >= 0)
        rows = self._known.take(at[listed])
        same = (rows["size"].to_numpy() == np.asarray(sizes, dtype=np.int64)[listed]) & \
            (rows["mtime"].to_numpy() == np.asarray(mtimes, dtype=np.int64)[listed])
        _place(found, listed[same], rows.filter(same), readable_rows(self.folder, self.row_bytes, self._packs()))
        return found

    def _packs(self) -> list[tuple[int, str, int]]:
        return list(self.db.execute("SELECT id, name, rows FROM packs WHERE rows > 0 ORDER BY id"))

    def images(self, where: np.ndarray) -> tuple[ShardedImages, np.ndarray]:
        """Every committed row of every pack (as far as its file still holds them), and the
        index in it of each (pack id, row) in ``where`` (as :meth:`lookup` gave them)."""
        packs = self._packs()
        readable = readable_rows(self.folder, self.row_bytes, packs)
        packs = [(pack_id, name, readable[pack_id]) for pack_id, name, _ in packs]
        start_of = np.full(max((pack_id for pack_id, _, _ in packs), default=0) + 1, -1, dtype=np.int64)
        total = 0
        for pack_id, _, rows in packs:
            start_of[pack_id] = total
            total += rows
        images = ShardedImages([self.folder / name for _, name, _ in packs], [rows for _, _, rows in packs],
                               self.image_shape, raw=True)
        return images, start_of[where[:, 0]] + where[:, 1]

    def shard(self, fingerprint: str) -> tuple[Path, Shard] | None:
        """The prepared shard an earlier ingest made of the same files, if it is still where
        it was kept, unchanged (same size and mtime): its path and what it holds."""
        try:
            row = self.db.execute("SELECT path, size, mtime, count, digests, sums, md5 FROM shards "
                                  "WHERE fingerprint = ?", (fingerprint,)).fetchone()
        except sqlite3.Error:
            return None
        if row is None:
            return None
        path, size, mtime, count, digests, sums, md5 = row
        path = Path(os.fsdecode(path))
        try:
            info = os.stat(path)
            sums = json.loads(sums)
        except (OSError, ValueError):
            return None
        if not stat.S_ISREG(info.st_mode) or info.st_size != size or info.st_mtime_ns != mtime \
                or len(digests) != count * DIGEST_BYTES:
            return None
        in_dvc = dvc_object(md5, size)  # the same bytes, as DVC keeps them: link those instead
        if in_dvc is not None and not os.path.samefile(in_dvc, path):
            path = in_dvc
        return path, Shard(count, bytes(digests), sums[0], sums[1], md5)

    def shard_folder(self, out_dir: Path) -> Path:
        """Where the shards published into ``out_dir`` are kept (hard links) for later ingests."""
        name = hashlib.sha256(os.fsencode(Path(out_dir).resolve())).hexdigest()[:16]
        return self.folder / f"shards-{name}"

    def remember_shard(self, fingerprint: str, out_dir: Path, staged: Path, shard: Shard) -> None:
        """``staged`` will be published into ``out_dir`` (renamed with its folder, so its size and
        mtime stay): a hard link to it is kept in :meth:`shard_folder`, so a later ingest may take
        it over if the same files make it up again, even after the published one was deleted
        (as DVC deletes a stage's outputs before running it). Where no link can be made (another
        file system), the published path is remembered instead."""
        self.published.add(fingerprint)
        kept = self.shard_folder(out_dir) / f"{fingerprint}.npy"
        try:
            kept.parent.mkdir(exist_ok=True)
            if not (kept.exists() and os.path.samefile(kept, staged)):
                kept.unlink(missing_ok=True)
                os.link(staged, kept)
        except OSError:
            kept = Path(out_dir) / staged.name
        info = os.stat(staged)
        try:
            self.db.execute("INSERT OR REPLACE INTO shards (fingerprint, path, size, mtime, count, digests, sums, md5) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                            (fingerprint, os.fsencode(kept), info.st_size, info.st_mtime_ns, shard.count,
                             shard.digests, json.dumps([shard.pixel_sum, shard.pixel_sq_sum]), shard.md5))
        except sqlite3.Error as exc:
            raise ByolError(f"conversion cache {self.folder}: cannot write to it ({exc}). Free space there, or "
                            "point paths.cache elsewhere.") from None

    def forget_shards(self, out_dir: Path) -> None:
        """Once ``out_dir`` holds this ingest's shards (those :meth:`remember_shard` was given),
        drop the links kept for the ones it no longer holds, and their rows, so the cache keeps
        one prepared folder's worth of shards for each, not every version's."""
        folder = self.shard_folder(out_dir)
        try:
            stale = [path for path in folder.iterdir() if path.stem not in self.published]
        except OSError:
            return
        for path in stale:
            path.unlink(missing_ok=True)
        try:
            self.db.executemany("DELETE FROM shards WHERE fingerprint = ? AND path = ?",
                                ((path.stem, os.fsencode(path)) for path in stale))
        except sqlite3.Error:  # rows of deleted links are never used (their file is gone): harmless
            pass

    def add(self, entries: Iterable[tuple[tuple[str, int, int], np.ndarray | None, str, str]]) -> None:
        """Record conversions: ((path, size, mtime_ns), pixels or None, kind, problem)."""
        entries = list(entries)
        if not entries:
            return
        pixels = [e[1] for e in entries if e[1] is not None]
        try:
            first = self._append(pixels)
            rows, n = [], 0
            for (path, size, mtime), image, kind, problem in entries:
                if image is None:
                    rows.append((_key(path), size, mtime, None, None, kind, problem, None))
                else:  # the digest of the pixels as written: what a read is checked against
                    rows.append((_key(path), size, mtime, self._pack[0], first + n, None, None, image_digest(image)))
                    n += 1
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute("UPDATE generation SET n = n + 1")
            (generation,) = self.db.execute("SELECT n FROM generation").fetchone()
            self.db.executemany(f"INSERT OR REPLACE INTO files ({_COLUMNS}, gen) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                (row + (generation,) for row in rows))
            if pixels:
                self.db.execute("UPDATE packs SET rows = ? WHERE id = ?", (self._pack_rows, self._pack[0]))
            self.db.execute("COMMIT")
        except (OSError, sqlite3.Error) as exc:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise ByolError(f"conversion cache {self.folder}: cannot write to it ({exc}). Free space there, or "
                            "point paths.cache elsewhere.") from None

    def _append(self, pixels: list[np.ndarray]) -> int:
        """Write rows to this process's pack (data first, fsynced); returns the first row's number."""
        if not pixels:
            return self._pack_rows
        if self._pack is None:
            name = f"pack-{time.time_ns()}-{os.getpid()}.u8"
            handle = open(self.folder / name, "wb")
            self.db.execute("INSERT INTO packs (name, rows) VALUES (?, 0)", (name,))
            pack_id = self.db.execute("SELECT id FROM packs WHERE name = ?", (name,)).fetchone()[0]
            self._pack, self._pack_rows = (pack_id, handle), 0
        handle = self._pack[1]
        first = self._pack_rows
        handle.write(np.ascontiguousarray(np.stack(pixels)).tobytes())
        handle.flush()
        os.fsync(handle.fileno())
        self._pack_rows += len(pixels)
        return first
