"""Embedding speed (onnxruntime vs PyTorch eager) and `byol neighbours` latency (exact vs approximate).

    python benchmarks/embed_search.py [--big 1000000] [--cli-runs 20] [--out benchmarks/results]

1. Embed img/s on CPU at batch 256, for untrained ResNet-18 encoders of width 0.125 (the
   default) and 1.0 on 1x28x28 images: the embed stage's own call (``Encoder.features``:
   normalise, onnxruntime, l2-normalise) against evaluate's PyTorch path
   (``extract_features`` then l2-normalise). Median of 5 passes after a warm-up.
2. One query against a gallery: the real one in data/embeddings (after `dvc repro`; 70k
   Fashion-MNIST images), and a synthetic class-structured one of ``--big`` 64-d rows
   (1000 clusters). In-process: p50/p99 over 200 queries of the search alone (exact
   ``top_k`` over vectors.npy; the faiss IVF index opened memory-mapped, at the nprobe
   ``ann.build`` chose for recall@10 >= 0.99), and recall@10 of the index against exact
   search on 200 queries that are not in the gallery. Fresh process: p50/p99 wall time
   of ``byol neighbours --index N`` over ``--cli-runs`` runs (Python start-up, params,
   imports, search, printing), with and without ``--exact``.
Prints Markdown tables and writes a JSON record to --out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from byol_core.search import ann  # noqa: E402
from byol_core.search.gallery import EMBED_CARD, VECTORS, Gallery, top_k  # noqa: E402
from record import write_results  # noqa: E402


def percentiles(seconds: list[float]) -> dict:
    ms = sorted(1000 * s for s in seconds)
    return {"p50_ms": round(statistics.median(ms), 3), "p99_ms": round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 3),
            "runs": len(ms)}


def embed_speed(width: float, n: int, batch: int = 256) -> dict:
    import torch
    import torch.nn.functional as F

    from byol_core.train.features import extract_features
    from byol_core.export import export_onnx
    from byol_core.train.nets import EncoderSpec, build_encoder
    from byol_core.onnxmodel import PREPROCESS_KEY, Encoder, preprocess_record

    torch.manual_seed(0)
    spec = EncoderSpec("resnet18", width, 1, True)
    net = build_encoder(spec).eval()
    images = np.random.default_rng(0).integers(0, 256, size=(n, 1, 28, 28), dtype=np.uint8)
    mean, std = torch.tensor([0.286]), torch.tensor([0.353])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "encoder.onnx"
        export_onnx(net, torch.randn(2, 1, 28, 28), path, 20, 4096,
                    {PREPROCESS_KEY: json.dumps(preprocess_record(1, 28, [0.286], [0.353])),
                     "byol.output_dim": str(spec.feature_dim)})
        encoder = Encoder.open(path)

        def onnx_pass():
            for start in range(0, n, batch):
                encoder.features(images[start:start + batch])

        def torch_pass():
            F.normalize(extract_features(net, images, mean, std, batch, torch.device("cpu")), dim=1)

        rates = {}
        for name, one in (("onnxruntime", onnx_pass), ("pytorch_eager", torch_pass)):
            one()  # warm-up
            runs = []
            for _ in range(5):
                started = time.perf_counter()
                one()
                runs.append(n / (time.perf_counter() - started))
            rates[name] = {"img_s_median": round(statistics.median(runs), 1), "img_s_runs": [round(r, 1) for r in runs]}
        # The two agree (the embed stage ships what evaluate measured).
        a = encoder.features(images[:64])
        b = F.normalize(extract_features(net, images[:64], mean, std, 64, torch.device("cpu")), dim=1).numpy()
    return {"width": width, "images": n, "batch": batch, "provider": encoder.provider, **rates,
            "ratio_onnx_over_torch": round(rates["onnxruntime"]["img_s_median"] / rates["pytorch_eager"]["img_s_median"], 3),
            "max_abs_diff": float(np.abs(a - b).max())}


def synthetic_gallery(folder: Path, n: int, dim: int, seed: int = 0) -> tuple[Path, np.ndarray]:
    """A gallery folder as the embed stage writes it (Parquet, vectors.npy, card.json) of
    ``n`` class-structured rows; returns its Parquet path and 200 more rows as queries."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from byol_core.search.embed import GROUP_ROWS, _schema

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(1000, dim)).astype(np.float32)

    def draw(m: int) -> np.ndarray:
        x = centres[rng.integers(0, 1000, m)] + 0.5 * rng.normal(size=(m, dim)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "embeddings.parquet"
    schema = _schema(dim)
    with pq.ParquetWriter(path, schema) as writer, open(folder / VECTORS, "wb") as vectors:
        np.lib.format.write_array_header_1_0(vectors, {"descr": "<f4", "fortran_order": False, "shape": (n, dim)})
        for start in range(0, n, GROUP_ROWS):
            m = min(n, start + GROUP_ROWS) - start
            x = draw(m)
            writer.write_table(pa.table({
                "index": np.arange(start, start + m), "split": ["train"] * m, "label": np.full(m, -1),
                "source": [f"synthetic/{i:07d}.png" for i in range(start, start + m)], "duplicate": np.zeros(m, bool),
                "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), dim)}, schema=schema))
            vectors.write(x.tobytes())
    (folder / EMBED_CARD).write_text(json.dumps({"rows": n, "dim": dim}))
    return path, draw(200)


def search_latency(path: Path, queries: np.ndarray, cli_runs: int, build_index: bool) -> dict:
    gallery = Gallery(path)
    result = {"rows": gallery.rows, "dim": gallery.dim}
    times = []
    exact = []
    for q in queries:
        started = time.perf_counter()
        _, rows = top_k(q[None], gallery.blocks(), 10)
        times.append(time.perf_counter() - started)
        exact.append(rows[0])
    result["exact_in_process"] = percentiles(times)
    if build_index:
        started = time.perf_counter()
        built = ann.build(gallery, path.with_name(ann.INDEX), seed=0, target=0.99)
        result["index"] = {**built, "build_seconds": round(time.perf_counter() - started, 1),
                           "file_mb": round(path.with_name(ann.INDEX).stat().st_size / 2**20, 1)}
        card = json.loads(path.with_name(EMBED_CARD).read_text())
        path.with_name(EMBED_CARD).write_text(json.dumps({**card, "approximate": built}))
        index = ann.open_index(path.with_name(ann.INDEX))
        times, hits = [], []
        for q, truth in zip(queries, exact):
            started = time.perf_counter()
            _, rows = ann.search(index, built["nprobe"], q[None], 10)
            times.append(time.perf_counter() - started)
            hits.append(len(set(rows[0].tolist()) & set(truth.tolist())) / 10)
        result["approximate_in_process"] = percentiles(times)
        result["approximate_recall_at_10_new_queries"] = round(float(np.mean(hits)), 4)
    if cli_runs:
        with tempfile.TemporaryDirectory() as tmp:
            params = _params_for(Path(tmp), path.parent)
            modes = [("cli_exact", ["--exact"])] + ([("cli_approximate", [])] if build_index else [])
            for name, extra in modes:
                times = []
                for i in range(cli_runs):
                    started = time.perf_counter()
                    done = subprocess.run([sys.executable, "-m", "byol_core.cli", "neighbours", "--index", str(i * 997 % gallery.rows),
                                           "--k", "10", *extra, "--params", str(params)], capture_output=True, text=True)
                    times.append(time.perf_counter() - started)
                    if done.returncode != 0:
                        raise SystemExit(done.stderr)
                result[name] = percentiles(times)
    return result


def _params_for(folder: Path, embeddings: Path) -> Path:
    import yaml

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["paths"] = {**{k: str(ROOT / v) for k, v in raw["paths"].items()}, "embeddings": str(embeddings)}
    raw["data"]["source_dir"] = str(ROOT / raw["data"]["source_dir"])
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--big", type=int, default=1_000_000, help="rows of the synthetic gallery")
    parser.add_argument("--cli-runs", type=int, default=20)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()

    figures = {"embed": [embed_speed(0.125, 4096), embed_speed(1.0, 1024)]}
    for row in figures["embed"]:
        print(json.dumps(row), flush=True)
    galleries = {}
    real = ROOT / "data" / "embeddings" / "embeddings.parquet"
    if real.is_file():
        gallery = Gallery(real)
        rng = np.random.default_rng(1)
        # Queries not in the gallery: real embeddings with a little noise.
        queries = gallery.vectors(np.sort(rng.choice(gallery.rows, 200, replace=False)))
        queries += 0.05 * rng.normal(size=queries.shape).astype(np.float32)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        with tempfile.TemporaryDirectory() as tmp:  # a copy, so the index never lands in data/
            copy = Path(tmp) / "embeddings"
            copy.mkdir()
            for name in ("embeddings.parquet", VECTORS, EMBED_CARD):
                (copy / name).write_bytes((real.parent / name).read_bytes())
            galleries["fashion_mnist_70k"] = search_latency(copy / "embeddings.parquet", queries, args.cli_runs, True)
        print(json.dumps(galleries["fashion_mnist_70k"]), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        path, queries = synthetic_gallery(Path(tmp) / "embeddings", args.big, 64)
        galleries[f"synthetic_{args.big}x64"] = search_latency(path, queries, args.cli_runs, True)
        print(json.dumps(galleries[f"synthetic_{args.big}x64"]), flush=True)
    figures["neighbours"] = galleries
    out, record = write_results("embed_search", figures, out=args.out, software=("torch", "onnxruntime"))

    print(f"\n{record['date'][:10]} - {record['machine']['cpu']}, {record['machine']['cores']} cores\n")
    print("| encoder width | onnxruntime img/s | PyTorch eager img/s | ratio | max abs diff |")
    print("| --- | --- | --- | --- | --- |")
    for row in record["embed"]:
        print(f"| {row['width']} | {row['onnxruntime']['img_s_median']:.0f} | {row['pytorch_eager']['img_s_median']:.0f} "
              f"| **{row['ratio_onnx_over_torch']:.2f}** | {row['max_abs_diff']:.1e} |")
    print("\n| gallery | exact p50/p99 ms | index p50/p99 ms | recall@10 | nprobe | index build s | CLI exact p50/p99 ms "
          "| CLI index p50/p99 ms |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, g in galleries.items():
        e, a = g["exact_in_process"], g.get("approximate_in_process", {})
        ce, ca = g.get("cli_exact", {}), g.get("cli_approximate", {})
        print(f"| {name} | {e['p50_ms']:.2f} / {e['p99_ms']:.2f} | {a.get('p50_ms', 0):.3f} / {a.get('p99_ms', 0):.3f} "
              f"| {g.get('approximate_recall_at_10_new_queries', '')} | {g.get('index', {}).get('nprobe', '')} "
              f"| {g.get('index', {}).get('build_seconds', '')} | {ce.get('p50_ms', 0):.0f} / {ce.get('p99_ms', 0):.0f} "
              f"| {ca.get('p50_ms', 0):.0f} / {ca.get('p99_ms', 0):.0f} |")
    print(f"Record: {out}")


if __name__ == "__main__":
    main()
