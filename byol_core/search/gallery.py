"""Nearest neighbours by cosine similarity over l2-normalised embeddings.

:func:`top_k` is exact search, blocked: the gallery arrives a block of rows at a time and
only the best ``k`` per query are kept between blocks, so memory holds one block and the
running results, however large the gallery. One query against a million 64-d embeddings
reads 256 MB at memory speed, about 25 ms on 2 cores; :mod:`byol_core.search.ann` takes over only
above ``embed.approximate_from`` rows. :class:`Gallery` is what the ``embed`` stage wrote.
numpy only.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from byol_core.errors import ByolError, brief
from byol_core.data.store import read_npy_header

BLOCK_ROWS = 65536  # gallery rows compared at once: a (queries x 65536) float32 similarity block
COLUMNS = ("index", "split", "label", "source", "duplicate")  # what a hit reports besides its similarity


def top_k(queries: np.ndarray, blocks: Iterable[np.ndarray], k: int,
          exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most similar gallery rows per query, exactly.

    queries (M, D) and each block (n, D) are l2-normalised float32; blocks are the gallery
    in order, so a row's number is its place in the concatenation. ``exclude`` (M,) names
    one gallery row per query to leave out (its own row; -1 for none). Returns similarities
    and rows, (M, k') each with k' = min(k, gallery rows), best first; equal similarities
    come in row order, so the result does not depend on the block size."""
    queries = np.asarray(queries, dtype=np.float32)
    m = len(queries)
    best_sim = np.full((m, 0), -np.inf, dtype=np.float32)
    best_row = np.zeros((m, 0), dtype=np.int64)
    offset = 0
    for block in blocks:
        sims = queries @ np.asarray(block, dtype=np.float32).T  # (M, n)
        if exclude is not None:
            local = exclude - offset
            hit = (local >= 0) & (local < len(block))
            sims[np.nonzero(hit)[0], local[hit]] = -np.inf
        rows = np.arange(offset, offset + len(block), dtype=np.int64)
        offset += len(block)
        sims, rows = _best(sims, np.broadcast_to(rows, sims.shape), k)  # the block's own best first
        best_sim, best_row = _best(np.concatenate([best_sim, sims], axis=1),
                                   np.concatenate([best_row, rows], axis=1), k)
    order = np.lexsort((best_row, -best_sim), axis=1) if best_sim.size else np.zeros_like(best_row)
    best_sim, best_row = np.take_along_axis(best_sim, order, axis=1), np.take_along_axis(best_row, order, axis=1)
    if exclude is not None and best_sim.size:  # a gallery smaller than k + 1 keeps an excluded row at -inf
        kept = np.isfinite(best_sim).all(axis=0)
        best_sim, best_row = best_sim[:, kept], best_row[:, kept]
    return best_sim, best_row


def _best(sims: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per query, the k columns of highest similarity (unordered), ties at the k-th
    similarity going to the lower row. ``rows`` rise along each row of columns."""
    if sims.shape[1] <= k:
        return sims, np.ascontiguousarray(rows)
    if k == 1:  # argmax takes the first of equal maxima: the lowest row
        keep = sims.argmax(axis=1)[:, None]
    else:
        keep = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        # argpartition may cut a tie arbitrarily: where more columns equal the k-th best
        # than fit, order those queries fully (by similarity, then row).
        kth = np.take_along_axis(sims, keep, axis=1).min(axis=1, keepdims=True)
        tied = np.flatnonzero(np.sum(sims >= kth, axis=1) > k)
        if len(tied):
            keep[tied] = np.lexsort((rows[tied], -sims[tied]), axis=1)[:, :k]
    return np.take_along_axis(sims, keep, axis=1), np.take_along_axis(rows, keep, axis=1)


VECTORS = "vectors.npy"  # beside the Parquet file: the same embeddings as one float32 (N, D) array
EMBED_CARD = "card.json"  # beside it too: what the embed stage recorded (its index, digests); not the dataset card


class Gallery:
    """The embeddings the ``embed`` stage wrote (see :mod:`byol_core.search.embed`), opened for
    search: the vectors from ``vectors.npy`` a block at a time (``pread``: memory holds one
    block), what a hit is from the Parquet file, a row group at a time."""

    def __init__(self, path: Path):
        import pyarrow.parquet as pq

        self.path = Path(path)
        self.vectors_path = self.path.with_name(VECTORS)
        fix = "Run `byol embed` (or `dvc repro`) to make it."
        if not self.path.is_file():
            raise ByolError(f"{self.path}: no embeddings there. {fix}")
        try:
            self._file = pq.ParquetFile(self.path)
            field = self._file.schema_arrow.field("embedding")
            self.dim = field.type.list_size
            missing = [c for c in COLUMNS if c not in self._file.schema_arrow.names]
        except Exception as exc:
            raise ByolError(f"{self.path}: not an embeddings file ({brief(exc, 120)}). {fix}") from None
        if missing or not self.dim or self.dim < 1:
            raise ByolError(f"{self.path}: not an embeddings file (columns {missing or ['embedding']} missing). {fix}")
        meta = self._file.metadata
        self.rows = meta.num_rows
        self._starts = np.cumsum([0] + [meta.row_group(i).num_rows for i in range(meta.num_row_groups)])
        self._offset = _vector_offset(self.vectors_path, self.rows, self.dim, fix)
        try:  # what the embed stage recorded beside it (an approximate index, near-duplicates)
            self.card = json.loads(self.path.with_name(EMBED_CARD).read_text())
        except (OSError, ValueError):
            self.card = {}
        if not isinstance(self.card, dict):
            self.card = {}

    def blocks(self, rows: int = BLOCK_ROWS, first: int = 0, stop: int | None = None) -> Iterator[np.ndarray]:
        """The embeddings of rows [first, stop), (n, D) float32, ``rows`` at a time, in order."""
        stop = self.rows if stop is None else stop
        with open(self.vectors_path, "rb") as handle:
            for start in range(first, stop, rows):
                n = min(rows, stop - start)
                block = np.empty((n, self.dim), dtype=np.float32)
                handle.seek(self._offset + start * self.dim * 4)
                if handle.readinto(memoryview(block).cast("B")) != block.nbytes:
                    raise ByolError(f"{self.vectors_path}: shorter than its header says. Run `byol embed` again.")
                yield block

    def nearest(self, queries: np.ndarray, k: int, exclude: np.ndarray | None = None,
                rows: tuple[int, int] | None = None, index=None, nprobe: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` most similar gallery rows per query, best first, among rows [first, stop)
        (``rows``; all by default), leaving out ``exclude`` (one gallery row per query, -1 for
        none): through the approximate ``index`` searching ``nprobe`` lists when one is given
        (:mod:`byol_core.search.ann`), else exactly (:func:`top_k`). Returns similarities and gallery rows."""
        if index is not None:
            from byol_core.search import ann

            return ann.search(index, nprobe, queries, k, exclude, rows)
        first, stop = rows if rows is not None else (0, self.rows)
        if exclude is not None and not (exclude >= 0).any():
            exclude = None
        local = None if exclude is None else exclude - first
        sims, found = top_k(queries, self.blocks(first=first, stop=stop), k, local)
        return sims, found + first

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """The embeddings of gallery rows ``rows`` (in that order)."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        with open(self.vectors_path, "rb") as handle:
            for i, row in enumerate(rows):
                handle.seek(self._offset + int(row) * self.dim * 4)
                handle.readinto(memoryview(out[i]).cast("B"))
        return out

    def _groups(self, rows: np.ndarray) -> dict[int, np.ndarray]:
        group = np.searchsorted(self._starts, rows, side="right") - 1
        return {int(g): rows[group == g] for g in np.unique(group)}

    def describe(self, rows: np.ndarray) -> list[dict]:
        """index, split, label, source and duplicate flag of gallery rows ``rows``."""
        rows = np.asarray(rows, dtype=np.int64).ravel()
        found: dict[int, dict] = {}
        for g, members in self._groups(rows).items():
            table = self._file.read_row_group(g, columns=list(COLUMNS)).to_pydict()
            for row in np.unique(members):
                local = int(row - self._starts[g])
                found[int(row)] = {c: table[c][local] for c in COLUMNS}
        return [found[int(row)] for row in rows]

    def find(self, split: str, index: int) -> int:
        """The gallery row of prepared image ``index`` of ``split``."""
        import pyarrow.compute as pc

        offset = 0
        for i in range(self._file.metadata.num_row_groups):
            table = self._file.read_row_group(i, columns=["index", "split"])
            hit = pc.and_(pc.equal(table["split"], split), pc.equal(table["index"], index))
            where = np.flatnonzero(hit.to_numpy(zero_copy_only=False))
            if len(where):
                return offset + int(where[0])
            offset += table.num_rows
        raise ByolError(f"{self.path}: no {split} image {index} among the {self.rows} embedded images.")


def _vector_offset(path: Path, rows: int, dim: int, fix: str) -> int:
    """Where the data of the float32 (rows, dim) .npy file at ``path`` starts."""
    try:
        with open(path, "rb") as handle:
            shape, offset = read_npy_header(path, handle, "<f4")
    except (OSError, ValueError) as exc:
        raise ByolError(f"{path}: cannot be read ({brief(exc, 120)}). {fix}") from None
    if shape != (rows, dim):
        raise ByolError(f"{path}: holds {shape} vectors, not the ({rows}, {dim}) of the embeddings file. {fix}")
    return offset
