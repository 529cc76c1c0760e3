"""Pretraining resumes from its last checkpoint only under the same params and data, and a
resumed run ends with exactly the weights of an uninterrupted one."""

from dataclasses import replace
from typing import Annotated

import pytest
import torch

import byol_core.train.loop as train
from byol_core.train import resume
from byol_core.config import load_params
from byol_core.data.prepared import load_prepared
from byol_core.data.ingest import ingest
from byol_core.errors import ByolError
from byol_core.schema.base import SAME_WEIGHTS, PositiveInt, same_weights
from byol_core.schema.pretrain import PretrainConfig
from byol_core.stages.pretrain import run as run_pretrain
from conftest import ROOT, TINY, write_params
from test_data import make_fashion_files

SMALL = {**TINY, "data.max_train": 256, "data.max_test": 64, "pretrain.epochs": 3,
         "pretrain.monitor_bank": 64, "pretrain.monitor_queries": 32}


def _project(tmp_path, **overrides):
    make_fashion_files(tmp_path / "src", n_train=256, n_test=64)
    params = load_params(write_params(tmp_path, {**SMALL, "data.source_dir": str(tmp_path / "src"), **overrides}))
    ingest(params.data, params.paths.prepared, params.paths.cache)
    return params


def _encoder_weights(params):
    return torch.load(params.paths.encoder, weights_only=True)["state_dict"]


class _Killed(Exception):
    pass


def _kill_after_checkpoint(monkeypatch, epochs_before_kill: int):
    real_save = train.save_state
    calls = {"n": 0}

    def save_then_die(path, state):
        real_save(path, state)
        calls["n"] += 1
        if calls["n"] == epochs_before_kill:
            raise _Killed

    monkeypatch.setattr(train, "save_state", save_then_die)


def test_resumed_run_equals_uninterrupted_run(tmp_path, monkeypatch):
    straight = _project(tmp_path / "a")
    run_pretrain(straight)

    resumed = _project(tmp_path / "b")
    with monkeypatch.context() as patch:
        _kill_after_checkpoint(patch, epochs_before_kill=2)
        with pytest.raises(_Killed):
            run_pretrain(resumed)
    assert resumed.paths.resume_state.is_file()
    assert not resumed.paths.encoder.exists()
    run_pretrain(resumed)

    a, b = _encoder_weights(straight), _encoder_weights(resumed)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name  # bitwise: CPU kernels here are deterministic


def test_state_from_other_params_is_not_resumed(tmp_path, monkeypatch, capsys):
    params = _project(tmp_path)
    with monkeypatch.context() as patch:
        _kill_after_checkpoint(patch, epochs_before_kill=1)
        with pytest.raises(_Killed):
            run_pretrain(params)
    changed = load_params(write_params(tmp_path, {**SMALL, "data.source_dir": str(tmp_path / "src"),
                                                  "pretrain.base_lr": 0.5}))
    state, _ = train.pretrain(changed, load_prepared(changed.paths.prepared), torch.device("cpu"))
    assert "made under other params or data" in capsys.readouterr().err
    assert [row["epoch"] for row in state.history] == [1, 2, 3]  # started fresh


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    # Eager steps (on a GPU too), so the poisoned step below is the one the loop takes.
    params = _project(tmp_path, **{"pretrain.epochs": 2, "pretrain.log_every": 1, "pretrain.cuda_graph": False})
    real_step = train.train_step
    calls = {"n": 0}

    def poisoned(state, *args, **kwargs):
        metrics = real_step(state, *args, **kwargs)
        calls["n"] += 1
        return replace(metrics, loss=metrics.loss * float("nan")) if calls["n"] > 5 else metrics

    monkeypatch.setattr(train, "train_step", poisoned)
    with pytest.raises(ByolError, match="loss became nan by step 6"):
        run_pretrain(params)
    blob = torch.load(params.paths.resume_state, weights_only=True)
    assert blob["epoch"] == 1  # the good epoch-1 checkpoint is intact
    assert all(torch.isfinite(v).all() for v in blob["model"].values() if v.is_floating_point())
    assert not params.paths.encoder.exists()


def test_two_pretrains_with_the_same_seed_write_the_same_bytes(tmp_path, monkeypatch):
    """encoder.pt is what evaluate and export depend on: the same seed must give the same
    md5 whatever temp name it was saved under, or DVC reruns them for nothing. checkpoint.pt
    and the metrics also hold wall times (seconds and img/s per epoch, which a resume adds
    up); on a clock that ticks alike in both runs they too come out byte for byte equal."""
    import hashlib
    import types

    params = _project(tmp_path, **{"pretrain.epochs": 1})
    outputs = (params.paths.encoder, params.paths.checkpoint, params.paths.pretrain_metrics,
               params.paths.pretrain_curve, params.paths.pretrain_steps)

    def md5s(fake_clock: bool) -> list[str]:
        if fake_clock:
            ticks = iter(range(1, 10**6))
            monkeypatch.setattr(train, "time", types.SimpleNamespace(perf_counter=lambda: 0.25 * next(ticks)))
        run_pretrain(params)  # the same folder each time: only the temp names differ
        monkeypatch.undo()
        return [hashlib.md5(path.read_bytes()).hexdigest() for path in outputs]

    real = [md5s(False), md5s(False)]
    assert real[0][0] == real[1][0]  # encoder.pt
    assert md5s(True) == md5s(True)  # every file, once the wall times agree


def _key_with(params, knob: str, value) -> str:
    """run_key of ``params`` with pretrain.``knob`` set to ``value``."""
    changed = params.model_copy(update={"pretrain": params.pretrain.model_copy(update={knob: value})})
    return resume.run_key(changed, "a" * 16, torch.device("cpu"))


def test_the_run_key_leaves_out_exactly_the_fields_the_schema_marks():
    """A state saved before the marks were read from the schema is still resumed: the key of
    the shipped params is the one the hand list gave, and the marked fields are those it named."""
    params = load_params(ROOT / "params.yaml")
    assert same_weights(PretrainConfig) == ("checkpoint_every", "log_every", "monitor_bank", "monitor_queries",
                                            "devices", "nodes", "resident_max_mb")
    assert resume.run_key(params, "a" * 16, torch.device("cpu")) == "b778e30dcfebea6b"
    assert resume.run_key(params, "a" * 16, torch.device("cuda")) == "a0c76a96398f83d8"
    key = resume.run_key(params, "a" * 16, torch.device("cpu"))
    assert _key_with(params, "log_every", 7) == _key_with(params, "resident_max_mb", 0.0) == key
    assert _key_with(params, "epochs", 7) != key and _key_with(params, "compile", True) != key


def test_marking_a_field_takes_it_out_of_the_run_key_and_unmarking_puts_it_back():
    params = load_params(ROOT / "params.yaml")

    class Unmarked(PretrainConfig):  # log_every without its mark
        log_every: PositiveInt

    class Marked(PretrainConfig):  # epochs marked
        epochs: Annotated[PositiveInt, SAME_WEIGHTS]

    def key(section: type[PretrainConfig], **update) -> str:
        pretrain = section.model_construct(**{**params.pretrain.__dict__, **update})
        return resume.run_key(params.model_copy(update={"pretrain": pretrain}), "a" * 16, torch.device("cpu"))

    assert "log_every" not in same_weights(Unmarked) and "epochs" in same_weights(Marked)
    assert key(PretrainConfig, log_every=7) == key(PretrainConfig)
    assert key(Unmarked, log_every=7) != key(Unmarked)
    assert key(PretrainConfig, epochs=7) != key(PretrainConfig)
    assert key(Marked, epochs=7) == key(Marked)
