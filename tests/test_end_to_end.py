"""The four stage commands, run as a user runs them, on a Fashion-MNIST slice."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

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
    for stage in ("ingest", "pretrain", "evaluate", "export"):
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
    for key in ("linear_top1", "linear_top5", "knn_top1", "random_init_linear_top1", "pixels_linear_top1"):
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
