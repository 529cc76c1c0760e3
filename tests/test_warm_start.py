"""Warm start (pretrain.init: previous): `byol promote` copies the last pretrain's full state to
paths.start and writes its sha256 into params.yaml; a warm-started pretrain begins from exactly
those weights, trains warm_epochs epochs with a fresh optimizer, and refuses a start that is
missing, has another digest or another architecture."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import torch
import yaml

import byol_core.train.loop as train
from byol_core.train import resume
from byol_core.cli import main
from byol_core.config import load_params, parse_params
from byol_core.errors import ByolError
from byol_core.data.ingest import ingest
from byol_core.promote import promote, with_digest
from byol_core.train.resume import save_state, state_record
from byol_core.schema.pretrain import derive_schedule
from byol_core.stages.pretrain import run as run_pretrain
from byol_core.train.step import Recipe, build_model, new_state
from conftest import ROOT, TINY, TINY_DVC, dvc, edit_params, git, make_fashion_files, make_project, params_dict, \
    write_params

CPU = torch.device("cpu")
# Eager steps (on a GPU too), so the first step below is one the loop takes through train_step.
SMALL = {**TINY, "data.max_train": 64, "data.max_test": 32, "pretrain.epochs": 1, "pretrain.batch_size": 16,
         "pretrain.monitor_bank": 32, "pretrain.monitor_queries": 16, "pretrain.cuda_graph": False}
STEPS_PER_EPOCH = 64 // 16


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Ingested tiny data and one finished scratch pretrain (models/checkpoint.pt)."""
    root = tmp_path_factory.mktemp("warm")
    make_fashion_files(root / "src", n_train=64, n_test=32)
    params = load_params(write_params(root, {**SMALL, "data.source_dir": str(root / "src")}))
    ingest(params.data, params.paths.prepared, params.paths.cache)
    run_pretrain(params)
    return root


@pytest.fixture
def project(trained, tmp_path):
    copy = tmp_path / "project"
    shutil.copytree(trained, copy)
    return copy


def _set(root, **overrides):
    for key, value in overrides.items():
        edit_params(root, key, value)
    return load_params(root / "params.yaml")


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _state_file(path, **overrides) -> str:
    """An untrained training state of the tiny model with ``overrides`` (``channels``: its
    image channels) saved at ``path``; returns its sha256."""
    channels = overrides.pop("channels", 1)
    params = parse_params(params_dict(**{**SMALL, **overrides}))
    state = new_state(params, channels, Recipe.for_run(params.pretrain, 64), CPU)
    save_state(path, state_record(state, "key", params))
    return _sha256(path)


def test_warm_start_begins_from_the_promoted_state_bit_for_bit(project, monkeypatch):
    promote(project / "params.yaml")
    params = _set(project, **{"pretrain.init": "previous", "pretrain.warm_epochs": 2})
    start = torch.load(params.paths.start, weights_only=True)["model"]
    assert params.pretrain.init_sha256 == _sha256(params.paths.start) == _sha256(params.paths.checkpoint)

    seen = {}
    real_step = train.train_step

    def first_step(state, images, augment, *args, **kwargs):
        if not seen:
            seen.update(model={k: v.detach().clone() for k, v in state.model.state_dict().items()},
                        momentum=dict(state.optimizer.state), step=state.step,
                        warmup_steps=state.recipe.schedule.warmup_steps)
        return real_step(state, images, augment, *args, **kwargs)

    monkeypatch.setattr(train, "train_step", first_step)
    run_pretrain(params)

    assert seen["model"].keys() == start.keys()
    for name, tensor in start.items():  # online encoder, projector, predictor and target
        assert torch.equal(seen["model"][name], tensor), name
    fresh = build_model(params, 1).state_dict()
    assert any(not torch.equal(fresh[name], start[name]) for name in start)  # the start is not the seeded init
    assert seen["momentum"] == {} and seen["step"] == 0  # the optimizer and the schedules begin afresh
    assert seen["warmup_steps"] == STEPS_PER_EPOCH // 2  # warmup_epochs 0.5 (warm_epochs 2 > epochs 1)
    metrics = json.loads(params.paths.pretrain_metrics.read_text())
    assert metrics["epochs"] == 2 and metrics["steps"] == metrics["total_steps"] == 2 * STEPS_PER_EPOCH
    assert metrics["init"] == "previous" and metrics["init_sha256"] == params.pretrain.init_sha256
    assert len(params.paths.pretrain_curve.read_text().splitlines()) == 1 + 2  # header, two epochs


class _Killed(Exception):
    pass


def test_a_killed_warm_run_resumes_from_its_own_state_not_the_start(project, monkeypatch, capsys):
    promote(project / "params.yaml")
    params = _set(project, **{"pretrain.init": "previous", "pretrain.warm_epochs": 2})
    real_save = train.save_state

    def save_then_die(path, state):
        real_save(path, state)
        raise _Killed

    with monkeypatch.context() as patch:
        patch.setattr(train, "save_state", save_then_die)
        with pytest.raises(_Killed):
            run_pretrain(params)
    params.paths.start.unlink()  # the resume state alone carries the run on
    run_pretrain(params)
    assert "resuming from" in capsys.readouterr().err
    assert json.loads(params.paths.pretrain_metrics.read_text())["epochs"] == 2


def test_a_start_with_another_digest_is_refused(project):
    promote(project / "params.yaml")
    params = _set(project, **{"pretrain.init": "previous", "pretrain.init_sha256": "0" * 64})
    with pytest.raises(ByolError) as error:
        run_pretrain(params)
    message = str(error.value)
    assert str(params.paths.start) in message and "0" * 64 in message and _sha256(params.paths.start) in message
    assert "byol promote" in message and "dvc pull" in message
    assert not params.paths.resume_state.exists()


def test_a_missing_start_is_refused(project):
    params = _set(project, **{"pretrain.init": "previous", "pretrain.init_sha256": "a" * 64})
    with pytest.raises(ByolError, match=r"no start file at \S+/models/start/checkpoint\.pt \(paths\.start\)\. "
                                        r"Run `byol promote`"):
        run_pretrain(params)


@pytest.mark.parametrize(("made_with", "named"), [
    ({"model.width": 0.25}, r"model\.width: 0\.25 there, 0\.125 here"),
    ({"model.projector_out": 16}, r"model\.projector_out: 16 there, 32 here"),
    ({"channels": 3}, r"online\.encoder\.conv1\.weight: shape \[8, 3, 3, 3\] there, \[8, 1, 3, 3\] here"),
], ids=["width", "head", "channels"])
def test_a_start_of_another_architecture_is_refused(project, made_with, named):
    start = project / "models" / "start" / "checkpoint.pt"
    digest = _state_file(start, **made_with)
    params = _set(project, **{"pretrain.init": "previous", "pretrain.init_sha256": digest})
    with pytest.raises(ByolError, match=rf"{start}: the promoted state has another architecture .*{named}.*"
                                        r"Set pretrain\.init: scratch, or promote a run"):
        run_pretrain(params)


def test_previous_without_a_digest_is_refused_at_validation():
    with pytest.raises(ByolError, match=r"pretrain: init is previous but init_sha256 is null: run `byol promote`"):
        parse_params(params_dict(**{"pretrain.init": "previous"}))


def test_the_warm_run_has_its_own_length_and_warmup():
    cfg = parse_params(params_dict(**{"pretrain.init": "previous", "pretrain.init_sha256": "a" * 64,
                                      "pretrain.epochs": 3, "pretrain.warmup_epochs": 0.5,
                                      "pretrain.warm_epochs": 2, "pretrain.batch_size": 256})).pretrain
    schedule = derive_schedule(cfg, 1000)  # 3 steps per epoch at batch 256
    assert cfg.run_epochs == 2 and schedule.total_steps == 2 * 3
    assert cfg.run_warmup_epochs == pytest.approx(0.5 * 2 / 3)  # warmup's share of the run, kept
    for epochs, warmup, warm in [(3, 0.5, 2), (3, 2.9, 1), (100, 10, 2), (2, 1.5, 50), (1, 0.0, 1)]:
        cfg = parse_params(params_dict(**{"pretrain.init": "previous", "pretrain.init_sha256": "a" * 64,
                                          "pretrain.epochs": epochs, "pretrain.warmup_epochs": warmup,
                                          "pretrain.warm_epochs": warm})).pretrain
        assert cfg.run_warmup_epochs <= warmup and cfg.run_warmup_epochs < cfg.run_epochs == warm


def test_run_key_covers_the_start():
    def key(**overrides):
        params = parse_params(params_dict(**{"pretrain.init": "previous", "pretrain.init_sha256": "a" * 64,
                                             **overrides}))
        return resume.run_key(params, "data", CPU)

    assert key() != key(**{"pretrain.init_sha256": "b" * 64})
    assert key() != key(**{"pretrain.warm_epochs": 3})
    assert key() != key(**{"pretrain.init": "scratch"})


def test_promote_writes_the_start_and_only_the_digest_line(tmp_path):
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")  # the real file, every comment in it
    before = (tmp_path / "params.yaml").read_bytes().splitlines(keepends=True)
    checkpoint, start = tmp_path / "models" / "checkpoint.pt", tmp_path / "models" / "start" / "checkpoint.pt"
    for run in range(2):  # a first promote (over null), then another (over a digest)
        digest = _state_file(checkpoint, **{"seed": run})
        line, _ = promote(tmp_path / "params.yaml")
        assert start.read_bytes() == checkpoint.read_bytes() and digest in line and "dvc add" in line
        after = (tmp_path / "params.yaml").read_bytes().splitlines(keepends=True)
        changed = [i for i, (a, b) in enumerate(zip(before, after)) if a != b]
        assert len(after) == len(before) and len(changed) == 1
        old, new = before[changed[0]].decode(), after[changed[0]].decode()
        assert new.startswith(f'  init_sha256: "{digest}"  # ') and old.startswith("  init_sha256: null ")
        assert new.partition("#")[2] == old.partition("#")[2]  # its comment kept
        assert load_params(tmp_path / "params.yaml").pretrain.init_sha256 == digest
    assert sorted(p.name for p in start.parent.iterdir()) == ["checkpoint.pt"]  # no temp file, no journal


def test_promote_into_a_file_that_already_says_previous(tmp_path):
    write_params(tmp_path, {**SMALL, "pretrain.init": "previous"})  # refused by every stage until promoted
    digest = _state_file(tmp_path / "models" / "checkpoint.pt")
    line, _ = promote(tmp_path / "params.yaml")
    assert load_params(tmp_path / "params.yaml").pretrain.init_sha256 == digest
    assert line.endswith("run `dvc repro`") and "set pretrain.init" not in line


def test_promote_without_a_checkpoint_fails_cleanly(tmp_path, capsys):
    params_file = write_params(tmp_path, SMALL)
    before = params_file.read_bytes()
    assert main(["promote", "--params", str(params_file)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("byol promote: error: training checkpoint not found at ") and err.count("\n") == 1
    assert "Traceback" not in err and "byol pretrain" in err
    assert params_file.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


@pytest.mark.parametrize("text", [
    "pretrain:\n  epochs: 3\n",
    "pretrain:\n  init_sha256: null\nother:\n  init_sha256: null\n",
    "pretrain:\n  init_sha256:\n    null\n",
])
def test_promote_needs_exactly_one_digest_line(text):
    with pytest.raises(ByolError, match=r"params\.yaml: `byol promote` rewrites the one line `  init_sha256: null`"):
        with_digest(text, "a" * 64)


def test_with_digest_keeps_line_endings_and_the_comment():
    text = "pretrain:\r\n  init_sha256: null     # where\r\n  epochs: 3\r\n"
    assert with_digest(text, "a" * 64) == f'pretrain:\r\n  init_sha256: "{"a" * 64}"  # where\r\n  epochs: 3\r\n'
    assert with_digest("  init_sha256: null\n", "b" * 64) == f'  init_sha256: "{"b" * 64}"\n'


def test_promoted_start_is_tracked_by_dvc_add_and_its_digest_is_a_pretrain_param(tmp_path, monkeypatch):
    root = make_project(tmp_path / "project", TINY_DVC)
    git(root, "add", "-A")
    git(root, "commit", "-qm", "project")
    digest = _state_file(root / "models" / "checkpoint.pt")
    monkeypatch.chdir(root)
    assert main(["promote"]) == 0
    dvc(root, "add", "models/start/checkpoint.pt")  # beside pretrain's outs in models/: no overlap
    tracked = yaml.safe_load((root / "models" / "start" / "checkpoint.pt.dvc").read_text())
    assert tracked["outs"][0]["path"] == "checkpoint.pt"
    changed = json.loads(dvc(root, "params", "diff", "--json").stdout)["params.yaml"]
    assert changed == {"pretrain.init_sha256": {"old": None, "new": digest}}  # what DVC sees
