"""embed: every prepared image through the shipped ONNX encoder -> embeddings, near-duplicates, pictures."""

from __future__ import annotations

import sys
import time


from byol_core import metrics


from byol_core.data.prepared import load_prepared, spread as spread_rows


from byol_core.search import ann
from byol_core.search.embed import near_duplicates, split_ranges, write_embeddings
from byol_core.errors import ByolError
from byol_core.onnxmodel import Encoder
from byol_core.pictures import embedding_map, neighbour_grid, pca_2d
from byol_core.schema.embed import EmbedParams
from byol_core.search.gallery import EMBED_CARD, Gallery, top_k
from byol_core.io.storage import Folder, StageCommit, write_json

VIEW = EmbedParams  # the params keys this stage reads (dvc.yaml's params: list)
GRID_QUERIES = 8  # test queries in the neighbour picture
MAP_POINTS = 5000  # test images on the 2-D map (evenly spaced)


def _progress(total: int):
    done, started, last = [0], time.perf_counter(), [0.0]

    def step(n: int) -> None:
        done[0] += n
        now = time.perf_counter()
        if now - last[0] > 10 or done[0] == total:
            last[0] = now
            print(f"embed: {done[0]}/{total} images, {done[0] / max(now - started, 1e-9):.0f} img/s",
                  file=sys.stderr)
    return step


def _pictures(gallery: Gallery, prepared: data.Prepared, k: int) -> dict[str, bytes]:
    """The neighbour grid (test queries against train) and the 2-D map of test embeddings."""
    classes = prepared.card.classes
    n_test, n_train = len(prepared.images["test"]), len(prepared.images["train"])
    if n_test == 0 or n_train == 0:
        raise ByolError(f"{prepared.card.source}: embed needs train and test images (found {n_train} and "
                        f"{n_test}). Ingest more data.")
    first = {split: start for split, (start, _) in split_ranges(gallery).items()}
    picked = spread_rows(n_test, GRID_QUERIES)
    queries = gallery.vectors(first["test"] + picked)
    train = first["train"]
    sims, rows = top_k(queries, gallery.blocks(first=train, stop=train + n_train), min(k, n_train))
    shape = prepared.images["train"].shape[1:]
    neighbours = prepared.images["train"].take(rows.ravel()).reshape(*rows.shape, *shape)
    label = lambda split, i: classes[int(prepared.labels[split][i])]  # noqa: E731
    grid = neighbour_grid(prepared.images["test"].take(picked), [label("test", i) for i in picked], neighbours,
                          [[label("train", i) for i in row] for row in rows], sims)
    shown = spread_rows(n_test, MAP_POINTS)
    points = pca_2d(gallery.vectors(first["test"] + shown))
    return {"neighbours": grid, "map": embedding_map(points, prepared.labels["test"][shown], classes)}


def run(params: EmbedParams) -> tuple[str, dict]:
    outputs = StageCommit("embed", params.paths.metrics)
    outputs.recover()
    paths, cfg = params.paths, params.embed
    prepared = load_prepared(paths.prepared)
    encoder = Encoder.open(paths.onnx)
    card = prepared.card
    if (encoder.channels, encoder.size) != (card.channels, card.height) or card.height != card.width:
        raise ByolError(f"{paths.onnx} takes {encoder.channels}x{encoder.size}x{encoder.size} images but the prepared "
                        f"data is {card.channels}x{card.height}x{card.width}. Run `byol pretrain` and "
                        "`byol export` on this data again.")
    if paths.embeddings.exists() and not (paths.embeddings / EMBED_CARD).is_file():
        raise ByolError(f"refusing to replace {paths.embeddings}: it exists but has no {EMBED_CARD}, so it was not "
                        "written by this stage. Point paths.embeddings at a new folder, or remove that one yourself.")
    total = sum(len(images) for images in prepared.images.values())
    started = time.perf_counter()
    found, pictures, figures = {}, {}, []

    def fill(folder):
        counts, sha256 = write_embeddings(encoder, prepared, paths.prepared / "manifest.parquet",
                                          folder / paths.embeddings_file.name, cfg.batch_size, _progress(total))
        seconds = time.perf_counter() - started
        gallery = Gallery(folder / paths.embeddings_file.name)
        approximate, index = None, None
        if gallery.rows >= cfg.approximate_from:  # too many to scan per query: an index too
            approximate = ann.build(gallery, folder / ann.INDEX, seed=0, target=cfg.approximate_recall)
            index = ann.open_index(folder / ann.INDEX)
            print(f"embed: approximate index of {gallery.rows} rows, nprobe {approximate['nprobe']}: recall@10 "
                  f"{approximate['recall_at_10']:.4f} against exact search on {approximate['recall_queries']} "
                  f"held-out rows ({approximate['build_seconds']:.0f}s)", file=sys.stderr)
        duplicates = near_duplicates(gallery, cfg.near_duplicate, folder / "near_duplicates.csv", index,
                                     approximate["nprobe"] if approximate else 0)
        pictures.update(_pictures(gallery, prepared, cfg.neighbours))
        found.update({
            "rows": gallery.rows, "dim": gallery.dim, "splits": counts, "provider": encoder.provider,
            "images_per_sec": total / max(seconds, 1e-9), "embed_seconds": seconds,
            "data_hash": card.data_hash, "encoder_data_hash": encoder.data_hash,
            "near_duplicates": duplicates, "approximate": approximate,
        })
        figures.append(metrics.EmbedMetrics(**{**found, "near_duplicates": metrics.NearDuplicates(**duplicates)}))
        # The card alone records the files' digests (`byol verify` checks them); the metrics stay as they were.
        recorded = {k: v for k, v in found.items() if k not in ("images_per_sec", "embed_seconds")}
        write_json(folder / EMBED_CARD, {**recorded, "sha256": sha256})

    # One commit: the folder is filled first, and the files after it are written from what
    # filling it found. All change together, or none does.
    outputs.write([(paths.embeddings, Folder(fill)),
                   (paths.embed_metrics, lambda tmp: metrics.writer(figures[0])(tmp)),
                   (paths.neighbours_png, lambda tmp: tmp.write_bytes(pictures["neighbours"])),
                   (paths.embedding_map_png, lambda tmp: tmp.write_bytes(pictures["map"]))])
    done = figures[0]
    dup = done.near_duplicates
    line = (f"embed: {done.rows} images -> {paths.embeddings_file} ({done.dim}-d, {encoder.provider}, "
            f"{done.images_per_sec:.0f} img/s); near-duplicates at cosine >= {dup.threshold}: "
            f"{dup.test_with_train_near_duplicate} test images, {dup.train_pairs} train pairs")
    return line, metrics.to_json(done)
