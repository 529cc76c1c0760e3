"""``kill -9`` of a running ``byol pretrain``, then the same command again: the run resumes
from its last saved state and ends with exactly the encoder of an uninterrupted run.

Every run here is a real ``byol pretrain`` process. The external kill lands wherever the run
happens to be (mid-epoch, just after a checkpoint). The other kills are made exact by a
small launcher that sends SIGKILL to its own process at a chosen point: in the middle of
an epoch, while committing the outputs at the end, and halfway through
writing a checkpoint file.
"""

import signal
import subprocess
import sys
import time

import pytest
import torch

from byol_core.config import load_params
from byol_core.data.ingest import ingest
from conftest import TINY, make_fashion_files, write_params

# 4 epochs of 8 steps: long enough (~2 s on CPU) for an outside kill to land mid-run; a GPU
# runs such an epoch in tens of milliseconds, so there the run is 30 epochs.
EPOCHS = 30 if torch.cuda.is_available() else 4
RUN = {**TINY, "data.max_train": 256, "data.max_test": 64, "pretrain.epochs": EPOCHS, "pretrain.batch_size": 32,
       "pretrain.warmup_epochs": 1, "pretrain.monitor_bank": 64, "pretrain.monitor_queries": 32,
       "pretrain.log_every": 2}
LAUNCHER = """
import os, signal, sys
import torch
import byol_core.train.loop as train
from byol_core.cli import main

point, after = sys.argv[1], int(sys.argv[2])
calls = {"n": 0}

def die():
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)

if point == "step":  # SIGKILL before the after-th training step (counted across epochs)
    import byol_core.train.graphed as graphed
    def counted(real):
        def step(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == after:
                die()
            return real(*args, **kwargs)
        return step
    train.train_step = counted(train.train_step)
    graphed.GraphedStep.__call__ = counted(graphed.GraphedStep.__call__)  # the step on one CUDA GPU
elif point == "midwrite":  # the after-th checkpoint write stops halfway through the file
    real_save = torch.save
    def half_save(obj, handle, *args, **kwargs):  # storage hands torch.save an open file
        calls["n"] += 1
        real_save(obj, handle, *args, **kwargs)
        if calls["n"] == after:
            handle.truncate(handle.tell() // 2)
            handle.flush()
            die()
    torch.save = half_save
elif point == "outputs":  # every output written in full and the commit decided, before any rename
    import byol_core.io.storage as storage
    storage._apply = lambda journal: die()
sys.exit(main(["pretrain", "--params", sys.argv[3]]))
"""


# On a CUDA machine every test runs for both step paths: the whole step as a CUDA graph
# (pretrain.cuda_graph, the default there) and eager steps. Elsewhere the graph never applies.
STEP_PATHS = [True, False] if torch.cuda.is_available() else [None]


@pytest.fixture(scope="module", params=STEP_PATHS,
                ids=lambda graph: {True: "cuda-graph", False: "eager", None: "eager"}[graph])
def source(request, tmp_path_factory):
    """The source files, and the step path (pretrain.cuda_graph) of this round of tests."""
    return make_fashion_files(tmp_path_factory.mktemp("src"), n_train=256, n_test=64), request.param


def _project(root, source, **overrides):
    folder, graph = source
    path = {} if graph is None else {"pretrain.cuda_graph": graph}
    params = load_params(write_params(root, {**RUN, "data.source_dir": str(folder), **path, **overrides}))
    ingest(params.data, params.paths.prepared, params.paths.cache)
    return params


def _pretrain(params, *launcher_args):
    params_file = str(params.paths.models.parent / "params.yaml")
    if launcher_args:
        command = [sys.executable, "-c", LAUNCHER, *map(str, launcher_args), params_file]
    else:
        command = [sys.executable, "-m", "byol_core.cli", "pretrain", "--params", params_file]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def _weights(params):
    return torch.load(params.paths.encoder, weights_only=True)["state_dict"]


def _max_abs_diff(a, b):
    assert a.keys() == b.keys()
    return max((x.double() - b[k].double()).abs().max().item() if x.is_floating_point()
               else float(not torch.equal(x, b[k])) for k, x in a.items())


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, source):
    params = _project(tmp_path_factory.mktemp("straight"), source)
    done = _pretrain(params)
    assert done.returncode == 0, done.stderr
    return _weights(params)


def _resume_and_compare(params, uninterrupted, resumed_after_epoch):
    assert not params.paths.encoder.exists() or resumed_after_epoch == RUN["pretrain.epochs"]
    again = _pretrain(params)
    assert again.returncode == 0, again.stderr
    assert f"resuming from {params.paths.resume_state} after epoch {resumed_after_epoch}" in again.stderr
    assert _max_abs_diff(_weights(params), uninterrupted) == 0.0  # bitwise (on CUDA: byol_core.device.exact_kernels)
    assert not params.paths.resume_state.exists()  # finished: nothing left to resume
    assert list(params.paths.resume.glob(".*.tmp")) == []


def test_outside_kill_9_then_rerun_equals_uninterrupted(tmp_path, source, uninterrupted):
    params = _project(tmp_path, source)
    params_file = str(tmp_path / "params.yaml")
    process = subprocess.Popen([sys.executable, "-m", "byol_core.cli", "pretrain", "--params", params_file],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not params.paths.resume_state.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # into the next epoch
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    assert not params.paths.encoder.exists(), "the run finished before the kill: lengthen RUN"
    saved = torch.load(params.paths.resume_state, weights_only=True)
    assert 1 <= saved["epoch"] < RUN["pretrain.epochs"]
    _resume_and_compare(params, uninterrupted, saved["epoch"])


def test_kill_mid_epoch_resumes_from_the_last_epoch_checkpoint(tmp_path, source, uninterrupted):
    params = _project(tmp_path, source)
    killed = _pretrain(params, "step", 8 * 2 + 5)  # 5 steps into epoch 3
    assert killed.returncode == -signal.SIGKILL
    _resume_and_compare(params, uninterrupted, resumed_after_epoch=2)


def test_kill_while_committing_the_outputs(tmp_path, source, uninterrupted):
    """Killed after every output was written in full and the commit was decided, before any
    was renamed into place: no output is visible (all old, none half new), and the next run
    completes the commit before it resumes."""
    params = _project(tmp_path, source)
    killed = _pretrain(params, "outputs", 0)
    assert killed.returncode == -signal.SIGKILL
    outputs = (params.paths.encoder, params.paths.checkpoint, params.paths.pretrain_metrics, params.paths.pretrain_curve)
    assert not any(path.exists() for path in outputs)
    assert (params.paths.models / ".pretrain.commit").is_file()
    _resume_and_compare(params, uninterrupted, resumed_after_epoch=RUN["pretrain.epochs"])
    assert all(path.exists() for path in outputs) and not (params.paths.models / ".pretrain.commit").exists()


def test_kill_while_writing_a_checkpoint_leaves_the_previous_one_loadable(tmp_path, source, uninterrupted):
    params = _project(tmp_path, source)
    killed = _pretrain(params, "midwrite", 3)  # the epoch-3 checkpoint is cut in half
    assert killed.returncode == -signal.SIGKILL
    halves = list(params.paths.resume.glob(".pretrain-state.pt.*.tmp"))
    assert len(halves) == 1 and halves[0].stat().st_size > 0
    with pytest.raises(Exception):
        torch.load(halves[0], weights_only=True)
    previous = torch.load(params.paths.resume_state, weights_only=True)
    assert previous["epoch"] == 2
    _resume_and_compare(params, uninterrupted, resumed_after_epoch=2)


def test_kill_on_the_streamed_path_resumes_to_the_resident_runs_weights(tmp_path, source, uninterrupted):
    """Data streamed from the shards (``resident_max_mb: 0``): killed mid-epoch,
    resumed, and bitwise equal to the uninterrupted run that kept its data resident."""
    params = _project(tmp_path, source, **{"pretrain.resident_max_mb": 0})
    killed = _pretrain(params, "step", 8 + 3)  # 3 steps into epoch 2
    assert killed.returncode == -signal.SIGKILL
    assert "streamed on " in killed.stderr
    _resume_and_compare(params, uninterrupted, resumed_after_epoch=1)
