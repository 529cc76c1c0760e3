"""Approximate search for galleries too large to scan per query: a faiss inverted-file index.

Used only at ``embed.approximate_from`` rows and above. Measured on 2 cores (benchmarks/
RESULTS.md): a fresh ``byol neighbours`` process scanning a memory-speed float32 file
exactly costs about 0.10 s + 0.03 s per million rows with a warm page cache; an IVF index
opened memory-mapped costs about 0.13 s flat, so the index pays off from about 3 million
rows. HNSW indexes (faiss, usearch) spend 0.1-0.5 s just loading at a million rows.

The index is ``IndexIVFFlat`` over inner products (cosine on l2-normalised rows), with
``nlist = 4 sqrt(N)`` lists trained on a seeded sample. After building, the number of lists
searched (``nprobe``) is raised until recall@10 against exact search, on held-out gallery
rows, reaches the target; that recall is recorded with the index and printed.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from byol_core.search.gallery import Gallery, top_k

INDEX = "index.faiss"
TRAIN_PER_LIST = 64  # training vectors per list (faiss warns below 39)
RECALL_QUERIES = 1000
RECALL_K = 10


def build(gallery: Gallery, out: Path, seed: int, target: float) -> dict:
    """Build the index of every gallery row into ``out`` and choose its ``nprobe``."""
    import faiss

    started = time.perf_counter()
    n, dim = gallery.rows, gallery.dim
    nlist = max(1, min(n // TRAIN_PER_LIST, round(4 * math.sqrt(n))))
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n, size=min(n, TRAIN_PER_LIST * nlist), replace=False))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.train(gallery.vectors(sample))
    for block in gallery.blocks():
        index.add(block)
    faiss.write_index(index, str(out))
    queries = np.sort(rng.choice(n, size=min(n, RECALL_QUERIES), replace=False))
    vectors = gallery.vectors(queries)
    _, exact = top_k(vectors, gallery.blocks(), RECALL_K, exclude=queries)
    nprobe, recall = 1, 0.0
    while True:
        _, found = search(index, nprobe, vectors, RECALL_K, exclude=queries)
        recall = float(np.mean([len(set(a) & set(b)) / max(len(a), 1) for a, b in zip(exact.tolist(), found.tolist())]))
        if recall >= target or nprobe >= nlist:
            break
        nprobe = min(nlist, nprobe * 2)
    return {"library": f"faiss {faiss.__version__}", "kind": "IndexIVFFlat", "nlist": nlist, "nprobe": nprobe,
            f"recall_at_{RECALL_K}": recall, "recall_queries": len(queries), "target": target,
            "build_seconds": time.perf_counter() - started}


def open_index(path: Path):
    """The index, memory-mapped (opening it costs a fraction of a millisecond)."""
    import faiss

    return faiss.read_index(str(path), faiss.IO_FLAG_MMAP)


def search(index, nprobe: int, queries: np.ndarray, k: int, exclude: np.ndarray | None = None,
           rows: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Like :func:`byol_core.search.gallery.top_k`, approximately: similarities and gallery rows of
    the ``k`` best per query (fewer where the lists searched hold fewer), leaving out
    ``exclude`` (one row per query, -1 for none) and, with ``rows`` = (first, stop), every
    row outside that range."""
    import faiss

    params = faiss.SearchParametersIVF(nprobe=nprobe)
    if rows is not None:
        selector = faiss.IDSelectorRange(int(rows[0]), int(rows[1]))
        params = faiss.SearchParametersIVF(nprobe=nprobe, sel=selector)
    extra = 0 if exclude is None else 1
    sims, found = index.search(np.ascontiguousarray(queries, dtype=np.float32), k + extra, params=params)
    keep = found >= 0
    if exclude is not None:
        keep &= found != np.asarray(exclude)[:, None]
    width = int(min(k, keep.sum(1).min())) if len(found) else 0
    order = np.argsort(~keep, axis=1, kind="stable")[:, :width]  # kept columns first, in rank order
    return np.take_along_axis(sims, order, axis=1), np.take_along_axis(found, order, axis=1).astype(np.int64)
