"""Embeddings of every prepared image through the shipped ONNX encoder, and near-duplicates.

``embeddings.parquet`` has one row per prepared image, splits in the order train, test,
unlabeled and images in their prepared order:

  ``index``      int64, the image's place in its split (as in the manifest)
  ``split``      string
  ``label``      int64 (-1 in ``unlabeled``)
  ``source``     string, the manifest's origin of the image (its file, or place in an archive)
  ``duplicate``  bool, an identical image came earlier (the manifest's flag)
  ``embedding``  fixed_size_list<float32>[D], l2-normalised: a dot product is a cosine

Beside it, ``vectors.npy`` holds the same embeddings, in the same row order, as one float32
(N, D) array: what search scans (a Parquet column decodes about 15 times slower). Both are
written a batch at a time (row groups of :data:`GROUP_ROWS`), so memory holds one batch of
images and one row group, however many images there are. The sha256 of each file is taken
from the bytes as they are written; the stage records them in its card.json, and
``byol verify`` checks the files against them (as ``sha256sum`` would).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np

from byol_core import csvfile
from byol_core.data.prepared import Prepared
from byol_core.errors import ByolError
from byol_core.onnxmodel import Encoder
from byol_core.search.gallery import VECTORS, Gallery

GROUP_ROWS = 65536
QUERY_ROWS = 4096  # queries compared with the gallery at once in the near-duplicate scan


def _schema(dim: int):
    import pyarrow as pa

    return pa.schema([("index", pa.int64()), ("split", pa.string()), ("label", pa.int64()),
                      ("source", pa.string()), ("duplicate", pa.bool_()),
                      ("embedding", pa.list_(pa.float32(), dim))])


def _manifest_columns(manifest_path: Path, split: str, n: int) -> tuple[list[str], np.ndarray]:
    """The ``source`` and ``duplicate`` of a split's prepared images, in index order."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(manifest_path, columns=["index", "split", "source", "duplicate", "status"],
                          filters=[("split", "=", split), ("status", "=", "ok")])
    table = table.sort_by("index")
    index = table["index"].to_numpy()
    if len(index) != n or (len(index) and not np.array_equal(index, np.arange(n))):
        raise ByolError(f"{manifest_path}: the {split} rows do not match the {n} prepared images. "
                        "Run `byol ingest` again.")
    return table["source"].to_pylist(), pc.fill_null(table["duplicate"], False).to_numpy(zero_copy_only=False)


class _Digesting(io.RawIOBase):
    """A new file, opened for writing, that keeps the sha256 of every byte written to it."""

    def __init__(self, path: Path):
        super().__init__()
        self.handle, self.sha256, self.at = open(path, "wb"), hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.sha256.update(data)
        self.at += memoryview(data).nbytes
        return self.handle.write(data)

    def tell(self) -> int:
        return self.at

    def close(self) -> None:
        self.handle.close()
        super().close()


def write_embeddings(encoder: Encoder, prepared: Prepared, manifest_path: Path, path: Path, batch_size: int,
                     progress: Callable[[int], None] = lambda n: None) -> tuple[dict[str, int], dict[str, str]]:
    """Embed every image of every split into ``path`` (Parquet) and ``vectors.npy`` beside it.
    Returns rows per split, and each file's name -> the sha256 of what was written to it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _schema(encoder.dim)
    counts = {}
    total = sum(len(images) for images in prepared.images.values())
    table_file, vectors_file = _Digesting(path), _Digesting(path.with_name(VECTORS))
    with table_file, vectors_file, pq.ParquetWriter(table_file, schema) as writer:
        np.lib.format.write_array_header_1_0(vectors_file, {"descr": "<f4", "fortran_order": False,
                                                            "shape": (total, encoder.dim)})
        for split, images in prepared.images.items():
            n = len(images)
            sources, duplicate = _manifest_columns(manifest_path, split, n)
            labels = prepared.labels[split]
            for start in range(0, n, GROUP_ROWS):
                stop = min(n, start + GROUP_ROWS)
                vectors = np.concatenate([encoder.features(images[i:min(stop, i + batch_size)])
                                          for i in range(start, stop, batch_size)])
                writer.write_table(pa.table({
                    "index": np.arange(start, stop, dtype=np.int64), "split": [split] * (stop - start),
                    "label": labels[start:stop], "source": sources[start:stop], "duplicate": duplicate[start:stop],
                    "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), encoder.dim),
                }, schema=schema))
                vectors_file.write(vectors.astype("<f4", copy=False).tobytes())
                progress(stop - start)
            counts[split] = n
    return counts, {path.name: table_file.sha256.hexdigest(), VECTORS: vectors_file.sha256.hexdigest()}


def split_ranges(gallery: Gallery) -> dict[str, tuple[int, int]]:
    """Each split's [first, last + 1) gallery rows (splits are stored one after another)."""
    import pyarrow.parquet as pq

    column = pq.read_table(gallery.path, columns=["split"])["split"].to_numpy(zero_copy_only=False)
    ranges = {}
    for split in dict.fromkeys(column):
        where = np.flatnonzero(column == split)
        ranges[str(split)] = (int(where[0]), int(where[-1]) + 1)
    return ranges


def near_duplicates(gallery: Gallery, threshold: float, out_csv: Path, index=None, nprobe: int = 0) -> dict:
    """Images whose nearest *other* train image has cosine similarity >= ``threshold``:
    test images (leakage: the test figure partly measures memory) and train images (pairs
    counted once). Every pair found is written to ``out_csv`` with its similarity. Exact,
    blocked search (test x train, train x train), or through ``index`` (see
    :mod:`byol_core.search.ann`) when one is given."""
    ranges = split_ranges(gallery)
    train = ranges.get("train", (0, 0))
    found = {"test_train": [], "train_train": []}
    nearest = []  # each test image's similarity to its nearest train image: the scale to read the threshold on
    for kind, split in (("test_train", "test"), ("train_train", "train")):
        if split not in ranges or train[1] == train[0]:
            continue
        lo, hi = ranges[split]
        for start in range(lo, hi, QUERY_ROWS):
            stop = min(hi, start + QUERY_ROWS)
            queries = next(gallery.blocks(stop - start, start, stop))
            exclude = np.arange(start, stop) if split == "train" else None
            sims, rows = gallery.nearest(queries, 1, exclude, train, index, nprobe)
            rows = rows - train[0]
            hit = np.flatnonzero(sims[:, 0] >= threshold) if sims.size else np.zeros(0, dtype=np.int64)
            if split == "test" and sims.size:
                nearest.append(sims[:, 0])
            for q in hit:
                a, b = start + int(q), train[0] + int(rows[q, 0])
                found[kind].append((min(a, b), max(a, b), float(sims[q, 0])) if split == "train" else
                                   (a, b, float(sims[q, 0])))
    # A train pair is found from both ends; its two similarities can differ in the last bit
    # (the products are summed in another order), so it is one pair by its rows alone.
    pairs = {}
    for a, b, sim in found["train_train"]:
        pairs[(a, b)] = max(sim, pairs.get((a, b), sim))
    found["train_train"] = [(a, b, sim) for (a, b), sim in sorted(pairs.items())]
    described = gallery.describe(np.array([r for pairs in found.values() for a, b, _ in pairs for r in (a, b)],
                                          dtype=np.int64))
    with open(out_csv, "w", newline="") as handle:
        writer = csvfile.writer(handle, lineterminator="\n")
        writer.writerow(["kind", "split_a", "index_a", "source_a", "split_b", "index_b", "source_b", "similarity"])
        it = iter(described)
        for kind, pairs in found.items():
            for _, _, sim in pairs:
                a, b = next(it), next(it)
                writer.writerow([kind.replace("_", "-"), a["split"], a["index"], a["source"], b["split"], b["index"],
                                 b["source"], f"{sim:.6f}"])
    quantiles = {}
    if nearest:
        values = np.concatenate(nearest)
        quantiles = {f"p{q}": round(float(np.quantile(values, q / 100)), 6) for q in (1, 50, 99)}
        quantiles["max"] = round(float(values.max()), 6)
    return {"threshold": threshold, "test_with_train_near_duplicate": len(found["test_train"]),
            "train_pairs": len(found["train_train"]), "test_nearest_train_similarity": quantiles}
