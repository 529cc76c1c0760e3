"""``byol neighbours``: the gallery images most like a query, by cosine similarity.

A query is an image file (any format PIL reads, converted exactly as ingest converts a
file: colour mode, short side to the encoder's size, centre crop), a ``.npy`` uint8 array
(C, H, W) of the encoder's shape, or ``--index [SPLIT:]N``, a prepared image, whose own
row is left out of its results. Queries go through the shipped ONNX file; the gallery is
the embeddings the ``embed`` stage wrote from the same file.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from byol_core.search import ann
from byol_core.errors import ByolError
from byol_core.onnxmodel import Encoder
from byol_core.search.gallery import Gallery


@dataclass(frozen=True)
class Query:
    name: str
    vector: np.ndarray  # (D,) l2-normalised
    row: int = -1  # its own gallery row, left out of the results (-1: none)


def parse_index(text: str) -> tuple[str, int]:
    """``N`` (a train image) or ``SPLIT:N``."""
    split, _, number = text.rpartition(":")
    try:
        index = int(number)
    except ValueError:
        index = -1
    if index < 0:
        raise ByolError(f"--index {text!r}: expected N or SPLIT:N with N a whole number >= 0 (e.g. 12 or test:12).")
    return split or "train", index


def read_query(path: Path, encoder: Encoder) -> np.ndarray:
    """The uint8 (1, C, H, W) pixels of a query file, as ingest would have stored it."""
    from byol_core.data.sources.imagefolder import convert_one

    if not path.exists():
        raise ByolError(f"{path}: no such file. Give an image file, a .npy array, or --index N.")
    if not path.is_file():
        raise ByolError(f"{path}: not a file. Give an image file, a .npy array, or --index N.")
    if path.suffix.lower() == ".npy":
        try:
            pixels = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ByolError(f"{path}: cannot be read as a .npy array ({exc}).") from None
        if pixels.ndim == 2:
            pixels = pixels[None]
        wanted = (encoder.channels, encoder.size, encoder.size)
        if pixels.dtype != np.uint8 or pixels.shape != wanted:
            raise ByolError(f"{path}: a {pixels.dtype} array of shape {pixels.shape}; the encoder takes uint8 "
                            f"{wanted} (channels, height, width). Save the image as a file ingest reads instead.")
        return pixels[None]
    pixels, _, problem = convert_one(str(path), encoder.channels, encoder.size)
    if pixels is None:
        raise ByolError(f"{path}: {problem}.")
    return pixels[None]


def search(gallery: Gallery, queries: list[Query], k: int, exact: bool = False) -> list[list[dict]]:
    """The ``k`` nearest gallery images of each query, best first: exactly, or through the
    approximate index when the embed stage built one (large galleries) and ``exact`` is off."""
    vectors = np.stack([q.vector for q in queries])
    exclude = np.array([q.row for q in queries], dtype=np.int64)
    approximate = gallery.card.get("approximate")
    index_path = gallery.path.with_name(ann.INDEX)
    index, nprobe = None, 0
    if approximate and index_path.is_file() and not exact:
        print(f"searching {gallery.rows} embeddings approximately ({approximate['kind']}, nprobe "
              f"{approximate['nprobe']}, measured recall@10 {approximate['recall_at_10']:.4f}); --exact searches "
              "them all", file=sys.stderr)
        index, nprobe = ann.open_index(index_path), approximate["nprobe"]
    sims, rows = gallery.nearest(vectors, k, exclude, index=index, nprobe=nprobe)
    described = gallery.describe(rows)
    results, it = [], iter(described)
    for q in range(len(queries)):
        results.append([{**next(it), "similarity": float(sims[q, j])} for j in range(rows.shape[1])])
    return results


def neighbours(onnx_path: Path, gallery_path: Path, classes: list[str], files: list[str], indices: list[str],
               k: int, exact: bool = False) -> list[dict]:
    """Everything ``byol neighbours`` prints, per query in the order given (files, then indices)."""
    if k < 1:
        raise ByolError(f"--k {k}: must be at least 1.")
    if not files and not indices:
        raise ByolError("no query: give image files, .npy arrays, or --index N.")
    gallery = Gallery(gallery_path)
    queries = []
    if files:
        encoder = Encoder.open(onnx_path)
        if encoder.dim != gallery.dim:
            raise ByolError(f"{gallery_path} holds {gallery.dim}-d embeddings but {onnx_path} makes {encoder.dim}-d "
                            "ones: run `byol embed` (or `dvc repro`) to embed the data with this encoder.")
        for name in files:
            queries.append(Query(name, encoder.features(read_query(Path(name), encoder))[0]))
    for text in indices:
        split, index = parse_index(text)
        row = gallery.find(split, index)
        queries.append(Query(f"{split}:{index}", gallery.vectors(np.array([row]))[0], row))
    found = search(gallery, queries, k, exact)
    out = []
    for query, hits in zip(queries, found):
        for hit in hits:
            label = hit["label"]
            hit["class"] = classes[label] if 0 <= label < len(classes) else None
        out.append({"query": query.name, "neighbours": hits})
    return out


def render(results: list[dict], as_json: bool) -> str:
    if as_json:
        return json.dumps(results, indent=2)
    lines = []
    for result in results:
        lines.append(f"{result['query']}:")
        for rank, hit in enumerate(result["neighbours"], 1):
            what = hit["class"] if hit["class"] is not None else "unlabelled"
            dup = "  (exact duplicate of an earlier image)" if hit["duplicate"] else ""
            lines.append(f"  {rank:>3}. {hit['similarity']:.4f}  {hit['split']}:{hit['index']}  {what}  "
                         f"{hit['source']}{dup}")
    return "\n".join(lines)
