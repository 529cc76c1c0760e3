"""The stages' figures files as types (byol_core.metrics): written byte for byte as the stages
always wrote them, read back checked, a missing or mistyped key named with its file."""

from __future__ import annotations

import dataclasses
import json

import pytest

from byol_core import metrics
from byol_core.errors import ByolError

EXPORT = {"latency_ms_batch1": 0.17, "latency_ms_batch256": 133.7, "max_abs_diff": 4.9e-06, "n_images": 256,
          "opset": 20, "parity_ok": True, "provider": "CPUExecutionProvider"}
PROBE = {"converged": True, "iterations": 40, "top1": 0.89, "top5": 0.99, "val_top1": 0.88, "weight_decay": 1e-4}
EVAL = {"effective_rank": 319.2, "knn_top1": 0.8354, "label_efficiency": {"byol": {"0.01": 0.79, "1.0": 0.89}},
        "linear_top1": 0.893, "linear_top5": 0.998, "mean_cosine": 0.52, "n_test": 10000, "n_train": 60000,
        "pixels_knn_top1": 0.8178, "pixels_linear_top1": 0.8475, "probe": {"byol": PROBE, "pixels": PROBE},
        "random_init_knn_top1": 0.7698, "random_init_linear_top1": 0.8372,
        "retrieval": {"byol": {"gallery": 60000, "map_at_r": 0.37, "queries": 10000, "recall_at_1": 0.85,
                               "recall_at_5": 0.96}},
        "spread": {"byol": {"effective_rank": 319.2, "effective_rank_fraction": 0.31, "mean_cosine": 0.52}},
        "subset": False}


def _written(tmp_path, raw: dict) -> str:
    path = tmp_path / "m.json"
    path.write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n")
    return path


@pytest.mark.parametrize("cls, raw", [(metrics.ExportMetrics, EXPORT), (metrics.EvalMetrics, EVAL)])
def test_a_file_read_and_written_again_is_the_same_bytes(tmp_path, cls, raw):
    path = _written(tmp_path, raw)
    found = metrics.read(cls, path, "stage")
    metrics.write(tmp_path / "again.json", found)
    assert (tmp_path / "again.json").read_bytes() == path.read_bytes()


def test_nested_figures_are_typed():
    built = metrics._build(metrics.EvalMetrics, EVAL, "")
    assert isinstance(built.probe["pixels"], metrics.ProbeSummary) and built.probe["pixels"].iterations == 40
    assert built.retrieval["byol"].recall_at_1 == 0.85 and built.spread["byol"].mean_cosine == 0.52
    export = metrics._build(metrics.ExportMetrics, EXPORT, "")
    assert export.latency == {"1": 0.17, "256": 133.7}


@pytest.mark.parametrize("change, says", [
    (lambda raw: raw.pop("linear_top1"), "'linear_top1': missing"),
    (lambda raw: raw.update(n_test=True), "'n_test': expected int, found true"),
    (lambda raw: raw.update(subset=1), "'subset': expected bool, found 1"),
    (lambda raw: raw["retrieval"]["byol"].pop("map_at_r"), "'retrieval.byol.map_at_r': missing"),
    (lambda raw: raw["probe"]["byol"].update(top1="0.9"), "'probe.byol.top1': expected float, found \"0.9\""),
])
def test_a_missing_or_mistyped_key_is_named_with_its_file(tmp_path, change, says):
    raw = json.loads(json.dumps(EVAL))
    change(raw)
    path = _written(tmp_path, raw)
    with pytest.raises(ByolError) as caught:
        metrics.read(metrics.EvalMetrics, path, "evaluate")
    assert str(caught.value) == (f"{path}: {says}. It was written by another version of evaluate: run `dvc repro "
                                 "--force evaluate` to write it again.")


def test_a_missing_or_unreadable_file_says_which_stage_writes_it(tmp_path):
    with pytest.raises(ByolError, match=r"missing: run `dvc repro export` \(or `dvc checkout`\) first"):
        metrics.read(metrics.ExportMetrics, tmp_path / "none.json", "export")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ByolError, match=r"bad.json: cannot be read as export's figures"):
        metrics.read(metrics.ExportMetrics, tmp_path / "bad.json", "export")


def test_every_shown_field_has_a_label_and_floats_a_format():
    for cls in (metrics.PretrainMetrics, metrics.EvalMetrics, metrics.ExportMetrics, metrics.EmbedMetrics):
        hints = {f.name: f.type for f in dataclasses.fields(cls)}
        for f in dataclasses.fields(cls):
            if "label" in f.metadata:
                assert f.metadata["label"], (cls, f.name)
                assert (hints[f.name] == "float") == bool(f.metadata["format"]), (cls, f.name)
