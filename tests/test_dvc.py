"""The real `dvc` (the project's .venv/bin/dvc, from its own environment) on a `git init`
copy of the project with tiny params: what reruns, what is skipped, push/pull, experiments
and bad params."""

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import SOURCE, TINY_DVC, dvc, edit_params, git, make_fashion_files, make_project, rename_param

STAGES = ("scan", "ingest", "pretrain", "evaluate", "export", "embed")
ALWAYS = {"scan"}  # always_changed: it lists the source folder on every repro, DVC never does
OUTPUTS = {"data/source.parquet", "data/prepared", "models/encoder.pt", "models/checkpoint.pt", "models/encoder.onnx",
           "models/encoder.onnx.json", "metrics/pretrain.json", "metrics/pretrain_curve.csv",
           "metrics/pretrain_steps.csv", "metrics/eval.json", "metrics/eval_predictions.csv",
           "metrics/label_efficiency.png", "metrics/export.json", "data/embeddings", "metrics/embed.json",
           "metrics/neighbours.png", "metrics/embedding_map.png"}


def ran(result: subprocess.CompletedProcess) -> set[str]:
    return {name for name in STAGES if f"Running stage '{name}'" in result.stdout}


def skipped(result: subprocess.CompletedProcess) -> set[str]:
    return {name for name in STAGES if f"Stage '{name}' didn't change, skipping" in result.stdout}


def up_to_date(root: Path) -> bool:
    """`dvc status` has nothing to say but that the scan always runs."""
    return json.loads(dvc(root, "status", "--json").stdout) == {"scan": ["always changed"]}


def lock_outs(root: Path) -> dict[str, str]:
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    return {out["path"]: out["md5"] for stage in lock["stages"].values() for out in stage.get("outs", [])}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """The project on tiny params and tiny random data after one `dvc repro`, committed."""
    root = make_project(tmp_path_factory.mktemp("dvc") / "project", TINY_DVC)
    first = dvc(root, "repro")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "tiny pipeline, reproduced")
    return root, first


@pytest.fixture
def project(base, tmp_path):
    """A private copy of the reproduced project (its git history and DVC cache included)."""
    copy = tmp_path / "project"
    shutil.copytree(base[0], copy, symlinks=True)
    return copy


def test_repro_runs_the_six_stages_and_caches_every_output(base):
    root, first = base
    assert ran(first) == set(STAGES)
    order = [first.stdout.index(f"Running stage '{name}'") for name in STAGES]
    assert order == sorted(order)
    outs = lock_outs(root)
    assert set(outs) == OUTPUTS
    assert outs["data/prepared"].endswith(".dir") and outs["data/embeddings"].endswith(".dir")
    # Nothing is written outside the declared outputs (the resume state is gone once done), but
    # the scan's side cache of digests by path, size and mtime (paths.cache, no output by design).
    known = {".git", ".dvc", "byol_core", "dvc.yaml", "dvc.lock", "params.yaml", ".dvcignore", "dagster.yaml", SOURCE,
             ".byol/cache/scan"}
    written = []
    for path in root.rglob("*"):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and path.name != ".gitignore" and not any(
                rel == k or rel.startswith(f"{k}/") for k in known | OUTPUTS):
            written.append(rel)
    assert written == []
    # Every cached output is in the cache, and git ignores it.
    assert up_to_date(root)
    ignored = subprocess.run(["git", "check-ignore", *sorted(OUTPUTS)], cwd=root, capture_output=True, text=True)
    assert sorted(ignored.stdout.split()) == sorted(OUTPUTS)


def test_metrics_show_prints_pretrain_eval_and_export_figures(base):
    root, _ = base
    shown = json.loads(dvc(root, "metrics", "show", "--json").stdout)
    found = {}

    def collect(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key.startswith("metrics/") and isinstance(value, dict) and "data" in value:
                    found[key] = value["data"]
                collect(value)

    collect(shown)
    assert set(found) == {"metrics/pretrain.json", "metrics/eval.json", "metrics/export.json", "metrics/embed.json"}
    assert found["metrics/embed.json"]["rows"] == 256 + 128
    assert 0.0 <= found["metrics/eval.json"]["retrieval"]["byol"]["map_at_r"] <= 1.0
    assert 0.0 <= found["metrics/eval.json"]["linear_top1"] <= 1.0
    assert found["metrics/pretrain.json"]["epochs"] == 1
    assert found["metrics/export.json"]["parity_ok"] is True


def test_plots_show_renders_the_curves_and_the_confusion_matrix(base, tmp_path):
    root, _ = base
    dvc(root, "plots", "show", "-o", str(tmp_path / "plots"))
    page = (tmp_path / "plots" / "index.html").read_text()
    for title in ("BYOL loss per epoch", "BYOL loss per logged step", "kNN top-1 of the monitor",
                  "target EMA rate tau", "learning rate", "collapse std", "confusion matrix"):
        assert title in page
    assert page.count("vegaEmbed(") == 7
    for picture in ("neighbours.png", "embedding_map.png", "label_efficiency.png"):
        assert picture in page  # the pictures, as images
    assert '"template": "confusion"' in page or "confusion" in page


def test_second_repro_scans_and_skips_every_other_stage(project):
    again = dvc(project, "repro")
    assert ran(again) == ALWAYS and skipped(again) == set(STAGES) - ALWAYS


def test_a_param_reruns_exactly_the_stages_that_read_it(project):
    prepared = lock_outs(project)["data/prepared"]
    edit_params(project, "pretrain.tau_base", 0.98)
    result = dvc(project, "repro")
    assert ran(result) == ALWAYS | {"pretrain", "evaluate", "export", "embed"} and skipped(result) == {"ingest"}
    assert lock_outs(project)["data/prepared"] == prepared
    edit_params(project, "evaluate.max_iter", 20)  # read by evaluate alone
    result = dvc(project, "repro")
    assert ran(result) == ALWAYS | {"evaluate"}


def test_forced_reruns_on_unchanged_inputs_leave_everything_downstream_up_to_date(project):
    before = lock_outs(project)
    forced = dvc(project, "repro", "--force", "--single-item", "ingest")
    assert ran(forced) == {"ingest"}
    for path in (project / SOURCE).iterdir():  # re-written with the same bytes: a new mtime
        path.write_bytes(path.read_bytes())
    result = dvc(project, "repro")  # the scan reads them again and lists the same contents
    assert ran(result) == ALWAYS and skipped(result) == set(STAGES) - ALWAYS
    assert lock_outs(project) == before
    # The same seed gives the same encoder.pt, byte for byte, so what reads it stays up to
    # date (checkpoint.pt and the metrics hold this run's wall times, and nothing reads them).
    forced = dvc(project, "repro", "--force", "--single-item", "pretrain")
    assert ran(forced) == {"pretrain"}
    assert lock_outs(project)["models/encoder.pt"] == before["models/encoder.pt"]
    assert up_to_date(project)


def test_new_source_data_reruns_everything(project):
    before = lock_outs(project)
    make_fashion_files(project / SOURCE, n_train=320, n_test=160, seed=1)
    result = dvc(project, "repro")
    assert ran(result) == set(STAGES)
    after = lock_outs(project)
    assert after["data/prepared"] != before["data/prepared"]
    assert after["models/encoder.pt"] != before["models/encoder.pt"]


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_push_then_pull_into_an_empty_workspace_restores_identical_outputs(project, tmp_path):
    dvc(project, "remote", "add", "--default", "store", str(tmp_path / "remote"))
    dvc(project, "push")
    files = {rel: _md5(project / rel) for rel in OUTPUTS if (project / rel).is_file()}
    prepared = {p.name: _md5(p) for p in (project / "data/prepared").iterdir()}
    shutil.rmtree(project / ".dvc" / "cache")
    shutil.rmtree(project / "data" / "prepared")
    for rel in files:
        (project / rel).unlink()
    dvc(project, "pull")
    assert {rel: _md5(project / rel) for rel in files} == files
    assert {p.name: _md5(p) for p in (project / "data/prepared").iterdir()} == prepared
    assert all(files[rel] == md5 for rel, md5 in lock_outs(project).items() if rel in files)
    assert up_to_date(project)


def test_exp_run_records_the_override(project):
    dvc(project, "exp", "run", "-S", "pretrain.epochs=2", "-n", "two-epochs")
    shown = json.loads(dvc(project, "exp", "show", "--json").stdout)
    found = []

    def collect(node):
        if isinstance(node, dict):
            if node.get("name") == "two-epochs":
                found.append(node)
            for value in node.values():
                collect(value)
        elif isinstance(node, list):
            for value in node:
                collect(value)

    collect(shown)
    assert found, f"experiment 'two-epochs' not in `dvc exp show`: {json.dumps(shown)[:2000]}"
    text = json.dumps(found[0])
    assert '"epochs": 2' in text  # the override, in params.yaml and in metrics/pretrain.json
    assert '"linear_top1"' in text


def test_a_typo_stops_the_first_stage_that_runs_with_the_key_named(project):
    """Every byol command validates the whole params file, and the scan runs first on every
    repro: a typo anywhere stops the pipeline there, before any stage could be skipped."""
    rename_param(project, "pretrain.epochs", "epohcs")
    result = dvc(project, "repro", ok=False)
    assert result.returncode != 0
    assert skipped(result) == set() and ran(result) == ALWAYS
    assert (project / "data" / "source.parquet").is_file()  # persist: the last listing stays
    assert "pretrain.epohcs: unknown key (did you mean 'pretrain.epochs'?)" in result.stderr


def test_a_failed_stage_leaves_no_partial_output_and_checkout_restores_it(project):
    before = lock_outs(project)
    edit_params(project, "evaluate.max_iter", "many")  # read only by evaluate
    result = dvc(project, "repro", "--single-item", "evaluate", ok=False)  # a whole repro would stop at scan
    assert result.returncode != 0
    assert ran(result) == {"evaluate"}
    assert "evaluate.max_iter" in result.stderr and "'many'" in result.stderr
    metrics = sorted(p.name for p in (project / "metrics").iterdir())
    assert "eval.json" not in metrics and not [m for m in metrics if m.startswith(".") and m != ".gitignore"]
    assert lock_outs(project) == before  # the lock still names the last good outputs
    dvc(project, "checkout")
    assert _md5(project / "metrics/eval.json") == before["metrics/eval.json"]
