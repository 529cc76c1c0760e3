"""The five stage commands and `byol neighbours`, run as a user runs them, on a Fashion-MNIST slice."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from PIL import Image

from byol_core.train.checkpoint import input_normalisation, load_encoder
from byol_core.data.prepared import load_prepared
from byol_core.train.features import extract_features

from conftest import TINY, fashion_mnist_dir, write_params

E2E = {
    **TINY,
    "data.max_train": 4096,
    "data.max_test": 1000,
    "pretrain.epochs": 6,
    "pretrain.batch_size": 128,
    "pretrain.warmup_epochs": 1,
    "pretrain.monitor_bank": 1000,
    "pretrain.monitor_queries": 500,
    "pretrain.log_every": 8,
    "evaluate.max_iter": 200,
    "export.parity_images": 64,
}


def _byol(stage: str, params: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "byol_core.cli", stage, "--params", str(params)],
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    source = fashion_mnist_dir()
    if source is None:
        pytest.fail("Fashion-MNIST is not installed: run `make setup` (it runs "
                    "`apt-get install -y dataset-fashion-mnist`) or put the four .gz files in data/raw/fashion-mnist/.")
    root = tmp_path_factory.mktemp("project")
    params = write_params(root, {**E2E, "data.source_dir": str(source)})
    outputs = {}
    for stage in ("ingest", "pretrain", "evaluate", "export", "embed"):
        result = _byol(stage, params)
        assert result.returncode == 0, f"byol {stage} failed:\n{result.stderr[-3000:]}"
        outputs[stage] = result
    return root, outputs


def test_each_stage_prints_one_summary_line(run):
    _, outputs = run
    for stage, result in outputs.items():
        lines = result.stdout.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"{stage}: "), result.stdout


def test_prepared_data_is_the_capped_slice(run):
    root, _ = run
    manifest = pd.read_parquet(root / "data" / "prepared" / "manifest.parquet")
    assert (manifest.split == "train").sum() == 4096 and (manifest.split == "test").sum() == 1000
    assert manifest.label.between(0, 9).all()


def test_pretrain_contract(run):
    root, _ = run
    metrics = json.loads((root / "metrics" / "pretrain.json").read_text())
    for key in ("final_loss", "epochs", "images_per_sec", "collapse_std", "knn_top1"):
        assert key in metrics
    assert metrics["epochs"] == 6
    assert 0 < metrics["final_loss"] < 8
    assert metrics["collapse_std"] > 0.3  # not collapsed
    assert metrics["images_per_sec"] > 0
    curve = pd.read_csv(root / "metrics" / "pretrain_curve.csv")
    assert list(curve.epoch) == [1, 2, 3, 4, 5, 6]
    assert curve.loss.iloc[-1] < curve.loss.iloc[0]
    assert curve.tau.is_monotonic_increasing
    blob = torch.load(root / "models" / "encoder.pt", weights_only=True)
    assert blob["spec"]["arch"] == "resnet18" and blob["input"]["size"] == 28
    assert not (root / ".byol" / "resume" / "pretrain-state.pt").exists()  # finished: resume state gone


def test_eval_contract_and_byol_beats_random_init(run):
    root, _ = run
    metrics = json.loads((root / "metrics" / "eval.json").read_text())
    for key in ("linear_top1", "linear_top5", "knn_top1", "random_init_linear_top1", "pixels_linear_top1",
                "random_init_knn_top1", "pixels_knn_top1"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["n_train"] == 4096 and metrics["n_test"] == 1000
    assert metrics["linear_top5"] >= metrics["linear_top1"]
    assert metrics["linear_top1"] > 0.5  # far above the 0.1 of chance on 10 classes
    assert metrics["linear_top1"] > metrics["random_init_linear_top1"] + 0.02, metrics
    predictions = pd.read_csv(root / "metrics" / "eval_predictions.csv")
    assert len(predictions) == 1000
    assert (predictions.actual == predictions.predicted).mean() == pytest.approx(metrics["linear_top1"], abs=1e-9)


def test_export_contract(run):
    root, _ = run
    metrics = json.loads((root / "metrics" / "export.json").read_text())
    assert metrics["parity_ok"] is True
    assert metrics["max_abs_diff"] < 1e-4
    assert metrics["provider"] in ("CPUExecutionProvider", "CUDAExecutionProvider")
    assert metrics["opset"] == 20
    sidecar = json.loads((root / "models" / "encoder.onnx.json").read_text())
    assert sidecar["input_shape"] == ["batch", 1, 28, 28]
    assert len(sidecar["normalisation"]["mean"]) == 1
    assert (root / "models" / "encoder.onnx").stat().st_size > 10_000


def test_eval_carries_retrieval_and_label_efficiency(run):
    root, _ = run
    metrics = json.loads((root / "metrics" / "eval.json").read_text())
    for name in ("byol", "random_init", "pixels"):
        found = metrics["retrieval"][name]
        assert 0.0 <= found["recall_at_1"] <= found["recall_at_5"] <= 1.0 and 0.0 < found["map_at_r"] <= 1.0
        assert found["queries"] == 1000 and found["gallery"] == 4096
        curve = metrics["label_efficiency"][name]
        assert set(curve) == {"0.01", "0.1", "1.0"}
        assert curve["1.0"] == metrics["probe"][name]["top1"]
    byol = metrics["label_efficiency"]["byol"]
    assert byol["1.0"] > byol["0.01"]  # 40 labels teach the probe less than 4096
    assert metrics["retrieval"]["byol"]["recall_at_1"] > 0.5  # chance is 0.1
    assert (root / "metrics" / "label_efficiency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_carries_the_spread_of_each_feature_set(run):
    root, outputs = run
    metrics = json.loads((root / "metrics" / "eval.json").read_text())
    for name in ("byol", "random_init", "pixels"):
        found = metrics["spread"][name]
        dim = round(found["effective_rank"] / found["effective_rank_fraction"])
        assert 1.0 <= found["effective_rank"] <= min(metrics["n_test"], dim), (name, found)
        assert -1 / (metrics["n_test"] - 1) <= found["mean_cosine"] <= 1.0, (name, found)
    assert dim == 28 * 28  # the pixels' row, last
    byol = metrics["spread"]["byol"]
    assert (metrics["effective_rank"], metrics["mean_cosine"]) == (byol["effective_rank"], byol["mean_cosine"])
    assert byol["mean_cosine"] < 0.99  # a collapsed encoder's is about 1
    assert f"effective rank {byol['effective_rank']:.1f} of " in outputs["evaluate"].stdout


def _client_features(onnx_path: Path, pixels: np.ndarray) -> np.ndarray:
    """What a client that knows nothing of this project computes: onnx + onnxruntime + the
    model's own metadata, no sidecar, none of byol_core."""
    import onnx
    import onnxruntime as ort

    props = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
    recipe = json.loads(props["byol.preprocess"])
    mean = np.array(recipe["mean"], dtype=np.float32)[None, :, None, None]
    std = np.array(recipe["std"], dtype=np.float32)[None, :, None, None]
    x = (pixels.astype(np.float32) * np.float32(recipe["scale"]) - mean) / std
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.astype(np.float32)})[0]


def test_the_onnx_file_alone_gives_the_encoders_features(run, tmp_path):
    root, _ = run
    alone = tmp_path / "encoder.onnx"  # copied without its sidecar
    alone.write_bytes((root / "models" / "encoder.onnx").read_bytes())
    prepared = load_prepared(root / "data" / "prepared", ("test",))
    pixels = prepared.images["test"][:64]
    got = _client_features(alone, pixels)
    encoder, _, info = load_encoder(root / "models" / "encoder.pt")
    mean, std = input_normalisation(info)
    expected = extract_features(encoder, pixels, mean, std, 64, torch.device("cpu")).numpy()
    assert np.abs(got - expected).max() < 1e-4 * max(1.0, np.abs(expected).max())
    props = {p.key: p.value for p in __import__("onnx").load(str(alone)).metadata_props}
    card = json.loads((root / "data" / "prepared" / "card.json").read_text())
    assert props["byol.data_hash"] == card["data_hash"] and json.loads(props["byol.preprocess"])["size"] == 28


def test_embeddings_cover_every_prepared_image_once(run):
    root, _ = run
    table = pq.read_table(root / "data" / "embeddings" / "embeddings.parquet")
    manifest = pd.read_parquet(root / "data" / "prepared" / "manifest.parquet")
    assert table.num_rows == len(manifest) == 4096 + 1000
    # One vector per image, as wide as the encoder's feature: 8 x 8 channels per cell of the
    # model.pool x model.pool grid.
    pool = yaml.safe_load((root / "params.yaml").read_text())["model"]["pool"]
    assert table.schema.field("embedding").type.list_size == 64 * pool * pool
    frame = table.drop(["embedding"]).to_pandas()
    merged = frame.merge(manifest, on=["split", "index"], suffixes=("", "_manifest"))
    assert len(merged) == len(frame)
    assert (merged.label == merged.label_manifest).all() and (merged.source == merged.source_manifest).all()
    vectors = np.stack(table["embedding"].to_numpy(zero_copy_only=False))
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # The ONNX file alone, on the prepared pixels, gives the stored embeddings.
    prepared = load_prepared(root / "data" / "prepared", ("test",))
    direct = _client_features(root / "models" / "encoder.onnx", prepared.images["test"][:32])
    direct /= np.linalg.norm(direct, axis=1, keepdims=True)
    stored = vectors[(frame.split == "test").to_numpy()][:32]
    assert np.abs(direct - stored).max() < 1e-5


def _neighbours(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "byol_core.cli", "neighbours", *args, "--params",
                           str(root / "params.yaml")], capture_output=True, text=True, timeout=300, cwd=root)


def test_a_training_image_saved_as_png_finds_itself_first(run, tmp_path):
    root, _ = run
    prepared = load_prepared(root / "data" / "prepared", ("train",))
    manifest = pd.read_parquet(root / "data" / "prepared" / "manifest.parquet")
    unique = manifest[(manifest.split == "train") & ~manifest.content_hash.duplicated(keep=False)]["index"].to_numpy()
    queries = []
    for i in unique[[3, 1000, 4000]]:
        path = tmp_path / f"train-{i}.png"
        Image.fromarray(prepared.images["train"][int(i):int(i) + 1][0, 0]).save(path)
        queries.append((int(i), path))
    result = _neighbours(root, *[str(p) for _, p in queries], "--k", "5", "--json")
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert [entry["query"] for entry in found] == [str(p) for _, p in queries]
    for (i, _), entry in zip(queries, found):
        first = entry["neighbours"][0]
        assert (first["split"], first["index"]) == ("train", i) and first["similarity"] >= 0.999
        assert len(entry["neighbours"]) == 5
        sims = [n["similarity"] for n in entry["neighbours"]]
        assert sims == sorted(sims, reverse=True)
    # Embedding the file equals the stored embedding of the prepared image.
    from byol_core.search.neighbours import read_query
    from byol_core.onnxmodel import Encoder
    from byol_core.search.gallery import Gallery

    encoder = Encoder.open(root / "models" / "encoder.onnx")
    gallery = Gallery(root / "data" / "embeddings" / "embeddings.parquet")
    for i, path in queries:
        from_file = encoder.features(read_query(path, encoder))[0]
        assert np.abs(from_file - gallery.vectors(np.array([gallery.find("train", i)]))[0]).max() <= 1e-5
    # The same image by its index: its own row is left out, the rest agree.
    by_index = json.loads(_neighbours(root, "--index", str(queries[0][0]), "--k", "4", "--json").stdout)[0]
    assert [(n["split"], n["index"]) for n in by_index["neighbours"]] == \
        [(n["split"], n["index"]) for n in found[0]["neighbours"][1:]]


@pytest.mark.parametrize(("args", "expected"), [
    (["missing.png"], "missing.png: no such file"),
    (["rgb.npy"], "rgb.npy: a uint8 array of shape (3, 28, 28); the encoder takes uint8 (1, 28, 28)"),
    (["corrupt.png"], "corrupt.png: cannot be read as an image"),
    (["small.png"], "small.png: 8x8 px is smaller than"),
    (["ok.png", "--k", "0"], "--k 0: must be at least 1"),
    (["--index", "test:99999"], "no test image 99999 among the 5096 embedded images"),
    (["--index", "seven"], "--index 'seven': expected N or SPLIT:N"),
])
def test_bad_queries_get_one_clear_line(run, tmp_path, args, expected):
    root, _ = run
    np.save(tmp_path / "rgb.npy", np.zeros((3, 28, 28), dtype=np.uint8))
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    Image.new("L", (8, 8)).save(tmp_path / "small.png")
    Image.new("L", (28, 28)).save(tmp_path / "ok.png")
    result = subprocess.run([sys.executable, "-m", "byol_core.cli", "neighbours", *args, "--params",
                             str(root / "params.yaml")], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("byol neighbours: error: ") and expected in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
