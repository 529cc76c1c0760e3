"""Image files -> converted pixels, through the conversion cache.

:func:`resolve` decides which files of a :class:`~byol_core.data.sources.common.FileSplit` the
prepared split holds: in sample order, the first ``cap`` usable ones (all, without a cap).
Files the cache already knows are only looked up; the rest are converted (in worker
processes) and added to the cache as they come, so an interrupted ingest keeps what it did.
The chosen files are then placed in path order, so files added together (a new folder, the
next numbers) land together in a few new shards. :class:`CheckedPixels` reads their pixels
back, each checked against the digest the cache stored with it: a damaged entry is
converted again from its file, so what the cache holds never passes into the prepared data
unchecked.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from byol_core.data.cache import BAD, OK, UNKNOWN, ConversionCache
from byol_core.errors import ByolError
from byol_core.data.sources import imagefolder
from byol_core.data.sources.common import FileSplit, Listed
from byol_core.data.store import DIGEST_BYTES, image_digest

CHUNK_BYTES = 8 << 20  # pixels held at a time: conversions waiting for the cache, rows read from it


@dataclass(frozen=True)
class Resolved:
    """The files a split holds, in path order: their origins, labels and places in the cache."""

    origins: list[str]
    labels: np.ndarray
    where: np.ndarray  # (n, 2): cache pack id and row
    digests: np.ndarray  # (n, DIGEST_BYTES) uint8: the digest the cache stored with each file's pixels
    skipped: list[dict]
    files: list[Listed]  # each file as listed (path below the split's root, size, mtime in ns)
    split: FileSplit  # where the files are and what they are converted to

    def fingerprint(self, start: int, stop: int) -> str:
        """Names the pixels of files ``start:stop`` (their paths, sizes and mtimes, in order)."""
        digest = hashlib.sha256()
        for origin, (_, size, mtime) in zip(self.origins[start:stop], self.files[start:stop]):
            digest.update(f"{origin}\0{size}\0{mtime}\n".encode("utf-8", "surrogateescape"))
        return digest.hexdigest()


def _problem(split: FileSplit, i: int, kind: str, problem: str) -> ByolError:
    path = split.root / split.files[i][0]
    return ByolError(f"{imagefolder.printable(str(path))}: {problem}. {imagefolder.ADVICE[kind]}")


def _still_as_listed(split: FileSplit, picked: list[int]) -> None:
    """Refuse to convert a file whose size or mtime is not what it was listed with: its pixels
    would be cached under the listed ones, and the prepared data would not be what the source
    listing names. (A file that cannot be stat-ed is left to the conversion to report.)"""
    for i in picked:
        path, size, mtime = split.files[i]
        try:
            info = os.stat(split.root / path)
        except OSError:
            continue
        if size >= 0 and (info.st_size, info.st_mtime_ns) != (size, mtime):
            raise ByolError(f"{imagefolder.printable(str(split.root / path))}: changed since data.source_dir was "
                            "listed. Run `byol scan` to list it as it is now (`dvc repro` runs scan before ingest), "
                            "then ingest again.")


def _by_path(files: list[Listed], rows: np.ndarray) -> np.ndarray:
    """``rows`` sorted by their files' paths, as Python orders the strings (by code point,
    which is UTF-8's byte order: Arrow sorts a million of them in a fraction of the time)."""
    paths = [files[i][0] for i in rows.tolist()]
    try:
        column = pa.array(paths, pa.string())
    except (UnicodeEncodeError, pa.ArrowException):  # a name that is not UTF-8 (surrogate escapes)
        return rows[sorted(range(len(rows)), key=paths.__getitem__)]
    return rows[pc.array_sort_indices(column).to_numpy()]


def resolve(split: FileSplit, labels: np.ndarray, cache: ConversionCache, on_corrupt: str, name: str,
            workers: int | None = None) -> Resolved:
    """Which files of ``split`` (labels: one per file) the prepared split holds; converts
    what the cache lacks. A file that cannot be used fails (``on_corrupt: fail``, naming
    the file) or is listed in ``skipped``."""
    files = split.files
    found = cache.lookup(files)
    status, where, digests, problems = found.status, found.where, found.digests, found.problems
    converted: list[int] = []
    pos = usable = 0
    while pos < len(files) and (split.cap is None or usable < split.cap):
        end = len(files) if split.cap is None else min(len(files), pos + split.cap - usable)
        missing = (np.flatnonzero(status[pos:end] == UNKNOWN) + pos).tolist()
        _still_as_listed(split, missing)
        converted += missing
        results = imagefolder.results([str(split.root / files[i][0]) for i in missing], split.channels,
                                      split.size, name, workers)
        pending = []
        with contextlib.closing(results):
            fresh = iter(zip(missing, results))
            for i in (np.flatnonzero(status[pos:end] != OK) + pos).tolist():  # OK ones need nothing here
                if status[i] == UNKNOWN:
                    _, (pixels, kind, problem) = next(fresh)
                    pending.append((files[i], pixels, kind, problem))
                    status[i] = OK if pixels is not None else BAD
                    if pixels is None:
                        problems[i] = (kind, problem)
                if status[i] == BAD and on_corrupt != "skip":
                    cache.add(pending)
                    raise _problem(split, i, *problems[i])
                if len(pending) * cache.row_bytes >= CHUNK_BYTES:
                    cache.add(pending)
                    pending = []
        cache.add(pending)
        usable += int((status[pos:end] == OK).sum())
        pos = end
    if converted:  # where the new conversions landed in the cache
        again = cache.lookup([files[i] for i in converted])
        status[converted], where[converted], digests[converted] = again.status, again.where, again.digests
        problems.update({converted[j]: problem for j, problem in again.problems.items()})
        cache.reconverted += int(found.lost[converted].sum())  # entries cut from their pack
    chosen = _by_path(files, np.flatnonzero(status[:pos] == OK)).tolist()
    skipped = [{"split": name, "origin": imagefolder.printable(files[i][0]), "reason": problems[i][1]}
               for i in np.flatnonzero(status[:pos] == BAD).tolist()]
    if status[:pos].min(initial=OK) == UNKNOWN:  # a file changed while it was converted
        raise ByolError(f"{split.root}: files changed while ingest read them. Run `byol ingest` again.")
    picked = np.asarray(chosen, dtype=np.int64)
    return Resolved(origins=[imagefolder.printable(files[i][0]) for i in chosen], labels=labels[picked],
                    where=where[picked], digests=digests[picked], skipped=skipped, files=[files[i] for i in chosen],
                    split=split)


class CheckedPixels:
    """The pixels of resolved files, read from the cache's packs and each checked against the
    digest stored with it. A damaged entry (its bytes changed in the pack) is converted again
    from its file and cached again; ``cache.reconverted`` counts them."""

    def __init__(self, resolved: Resolved, cache: ConversionCache, name: str):
        self.resolved, self.cache, self.name = resolved, cache, name
        self.images, self.index = cache.images(resolved.where)

    def take(self, start: int, stop: int) -> tuple[np.ndarray, bytes]:
        """(uint8 (stop - start, C, S, S): the pixels of files ``start:stop``, their digests back
        to back), the digests taken from the pixels returned (the shard writer keeps them)."""
        pixels = self.images.take(self.index[start:stop])
        got = np.frombuffer(b"".join(image_digest(image) for image in pixels), dtype=np.uint8).reshape(-1, DIGEST_BYTES)
        damaged = np.flatnonzero((got != self.resolved.digests[start:stop]).any(axis=1))
        if len(damaged):
            pixels[damaged] = self._convert_again(start + damaged)
            got = got.copy()
            got[damaged] = np.frombuffer(b"".join(image_digest(pixels[i]) for i in damaged),
                                         dtype=np.uint8).reshape(-1, DIGEST_BYTES)
        return pixels, got.tobytes()

    def _convert_again(self, picked: np.ndarray) -> np.ndarray:
        split, listed = self.resolved.split, [self.resolved.files[i] for i in picked]
        fresh = list(imagefolder.results([str(split.root / f[0]) for f in listed], split.channels, split.size,
                                         self.name))
        for (pixels, _, _), f in zip(fresh, listed):
            if pixels is None:  # it converted before with this size and mtime: it was changed under us
                raise ByolError(f"{imagefolder.printable(str(split.root / f[0]))}: changed while ingest read it. "
                                "Run `byol ingest` again.")
        self.cache.add((f, pixels, "", "") for f, (pixels, _, _) in zip(listed, fresh))
        self.cache.reconverted += len(listed)
        return np.stack([pixels for pixels, _, _ in fresh])

    def close(self) -> None:
        self.images.close()
