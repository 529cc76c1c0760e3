"""Pretraining on two processes (torchrun, gloo on CPU) against one process.

- ``byol pretrain`` with ``pretrain.devices: 2`` relaunches itself through torchrun; both
  ranks end with identical online and target weights (their hashes are compared), rank 0
  alone writes and prints, and a run killed mid-way resumes under DDP.
- The maths of the distributed step (sharded views, SyncBatchNorm, gradient averaging,
  LARS, EMA) equals one process's: in float64 the two agree to ~1e-12.
- In float32 they cannot agree bit for bit: two ranks reduce BatchNorm statistics and
  convolution gradients over half batches and then add, one process over the whole batch,
  so sums round differently; BatchNorm's backward cancels large terms, which magnifies
  those roundings, and training then compounds them. The whole-run tolerance is stated
  below (TOLERANCE).
- Two nodes of one process each (two launchers with PET_NODE_RANK 0 and 1, rendezvous on
  127.0.0.1, each node with its own copy of the project) are the same world of two ranks:
  they end bit for bit where one node with two processes does, node 0 alone writes, and
  killing node 1 mid-run stops node 0 within seconds; both launchers again resume bitwise.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, TINY, make_fashion_files, write_params

DDP = {**TINY, "device": "cpu", "data.max_train": 128, "data.max_test": 64, "pretrain.batch_size": 32,
       "pretrain.epochs": 3, "pretrain.warmup_epochs": 1, "pretrain.monitor_bank": 64,
       "pretrain.monitor_queries": 32, "pretrain.log_every": 2}
# float32, 12 steps: per-epoch loss within 5% of one process's, encoder weights within 10% (relative L2).
TOLERANCE = {"loss": 0.05, "weights": 0.10}


def _env():
    env = {key: value for key, value in os.environ.items() if not key.startswith("PET_")}
    return {**env, "OMP_NUM_THREADS": "1"}


def _project(root, source, **overrides):
    params = write_params(root, {**DDP, "data.source_dir": str(source), **overrides})
    subprocess.run([sys.executable, "-m", "byol_core.cli", "ingest", "--params", str(params)],
                   check=True, capture_output=True, env=_env())
    return params


def _pretrain(params, **kwargs):
    return subprocess.run([sys.executable, "-m", "byol_core.cli", "pretrain", "--params", str(params)],
                          capture_output=True, text=True, timeout=600, env=_env(), **kwargs)


def _encoder(root):
    return torch.load(root / "models" / "encoder.pt", weights_only=True)["state_dict"]


def _curve(root):
    lines = (root / "metrics" / "pretrain_curve.csv").read_text().splitlines()
    header = lines[0].split(",")
    return [float(line.split(",")[header.index("loss")]) for line in lines[1:]]


def _relative_l2(a, b):
    num = sum(float((a[k].double() - b[k].double()).pow(2).sum()) for k in a if a[k].is_floating_point())
    den = sum(float(a[k].double().pow(2).sum()) for k in a if a[k].is_floating_point())
    return (num / den) ** 0.5


def _processes_of(params) -> list[int]:
    """Live (not zombie) processes whose command line names ``params``."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                cmdline = handle.read()
            with open(f"/proc/{entry}/stat") as handle:
                state = handle.read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if str(params).encode() in cmdline and state != "Z":
            found.append(int(entry))
    return found


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return make_fashion_files(tmp_path_factory.mktemp("src"), n_train=128, n_test=64)


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory, source):
    root = tmp_path_factory.mktemp("ddp")
    done = _pretrain(_project(root, source, **{"pretrain.devices": 2}))
    assert done.returncode == 0, done.stderr[-3000:]
    return root, done


def test_two_processes_train_in_step_and_rank_0_alone_writes(two_process_run):
    root, done = two_process_run
    assert "launching 2 processes" in done.stderr
    assert "all 2 ranks hold identical online and target weights" in done.stderr
    assert done.stdout.count("pretrain: 3 epochs, 12 steps") == 1  # one summary: rank 0's
    assert done.stderr.count("epoch 3/3") == 1
    assert (root / "models" / "encoder.pt").is_file() and (root / "metrics" / "pretrain.json").is_file()
    assert not (root / ".byol" / "resume" / "pretrain-state.pt").exists()


def test_two_processes_match_one_process_within_the_stated_tolerance(two_process_run, tmp_path, source):
    root, _ = two_process_run
    single = tmp_path
    done = _pretrain(_project(single, source))  # same global batch (32), seed and data
    assert done.returncode == 0, done.stderr[-3000:]
    for a, b in zip(_curve(single), _curve(root), strict=True):
        assert abs(a - b) / abs(a) < TOLERANCE["loss"], (_curve(single), _curve(root))
    drift = _relative_l2(_encoder(single), _encoder(root))
    print(f"2 vs 1 process: losses {_curve(single)} vs {_curve(root)}, encoder relative L2 {drift:.4f}")
    assert drift < TOLERANCE["weights"]


def test_distributed_step_equals_one_process_in_float64(tmp_path, source):
    params = write_params(tmp_path, {**DDP, "data.source_dir": str(source)})
    worker = str(ROOT / "tests" / "helpers" / "ddp_steps.py")
    subprocess.run([sys.executable, worker, str(params), str(tmp_path / "one.pt")], check=True, env=_env())
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                    worker, str(params), str(tmp_path / "two.pt")], check=True, capture_output=True, env=_env())
    one, two = (torch.load(tmp_path / name, weights_only=True) for name in ("one.pt", "two.pt"))
    assert one.keys() == two.keys()
    for name in one:
        if one[name].is_floating_point() and one[name].abs().max() > 0:
            scale = one[name].abs().max()
            assert (one[name] - two[name]).abs().max() / scale < 1e-9, name


def test_killed_two_process_run_resumes_to_the_same_weights(two_process_run, tmp_path, source):
    root, _ = two_process_run
    params = _project(tmp_path, source, **{"pretrain.devices": 2})
    resume = tmp_path / ".byol" / "resume" / "pretrain-state.pt"
    process = subprocess.Popen([sys.executable, "-m", "byol_core.cli", "pretrain", "--params", str(params)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(),
                               start_new_session=True)
    deadline = time.monotonic() + 300
    while not resume.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)  # the launcher and torchrun; the ranks die with them
    process.wait()
    deadline = time.monotonic() + 60
    while _processes_of(params) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _processes_of(params), "a rank outlived the killed launcher"
    assert not (tmp_path / "models" / "encoder.pt").exists(), "the run finished before the kill"
    saved = torch.load(resume, weights_only=True)["epoch"]
    assert 1 <= saved < DDP["pretrain.epochs"]
    again = _pretrain(params)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming from {resume} after epoch {saved}" in again.stderr, again.stderr[-3000:]
    a, b = _encoder(root), _encoder(tmp_path)
    assert all(torch.equal(a[k], b[k]) for k in a)  # gloo sums two ranks in a fixed order: bitwise


# --- Two nodes: two launchers, as two machines would start them -------------------------

def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _node_copies(base, source) -> list:
    """Node 0's project and node 1's own copy of it (same params and prepared data), as each
    machine would have its clone after `dvc pull`."""
    roots = [base / "node0", base / "node1"]
    roots[0].mkdir()
    _project(roots[0], source, **{"pretrain.nodes": 2})
    shutil.copytree(roots[0], roots[1])
    return roots


def _files(root) -> dict:
    return {path: path.stat().st_mtime_ns for path in root.rglob("*")}


def _start_nodes(roots, port, logs) -> list[subprocess.Popen]:
    """Both launchers, each in its own session (a machine's process tree); stderr to ``logs``."""
    started = []
    for rank, root in enumerate(roots):
        env = {**_env(), "PET_NODE_RANK": str(rank), "PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": str(port)}
        with open(logs / f"node{rank}.err", "w") as err:
            started.append(subprocess.Popen([sys.executable, "-m", "byol_core.cli", "pretrain", "--params",
                                             str(root / "params.yaml")], stdout=subprocess.PIPE, stderr=err,
                                            text=True, env=env, start_new_session=True))
    return started


def _finish(nodes, timeout=300) -> list[str]:
    """Each launcher's stdout, once all have ended (killed, process trees and all, if one
    outlives ``timeout``)."""
    try:
        return [node.communicate(timeout=timeout)[0] for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                os.killpg(node.pid, signal.SIGKILL)
                node.wait()


@pytest.mark.parametrize("node_rank, says", [(None, "PET_NODE_RANK is not set"), ("2", "PET_NODE_RANK is 2")])
def test_a_node_without_a_valid_node_rank_is_refused_before_torchrun(tmp_path, node_rank, says):
    params = write_params(tmp_path, {**DDP, "pretrain.nodes": 2})
    env = {**_env(), "PET_MASTER_ADDR": "127.0.0.1", **({"PET_NODE_RANK": node_rank} if node_rank else {})}
    done = subprocess.run([sys.executable, "-m", "byol_core.cli", "pretrain", "--params", str(params)],
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 1 and says in done.stderr and "set it to 0 on the node" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and "launching" not in done.stderr


def test_two_nodes_end_bitwise_where_one_node_of_two_processes_does(two_process_run, tmp_path, source):
    one_node, _ = two_process_run
    roots = _node_copies(tmp_path, source)
    before = _files(roots[1])
    nodes = _start_nodes(roots, _free_port(), tmp_path)
    out = _finish(nodes)
    errors = [(tmp_path / f"node{rank}.err").read_text() for rank in (0, 1)]
    assert [node.returncode for node in nodes] == [0, 0], errors
    assert "launching 2 processes on node 1 of 2" in errors[1]
    assert out[0].count("pretrain: 3 epochs, 12 steps") == 1 and out[1] == ""  # node 0 speaks for both
    assert _files(roots[1]) == before, "node 1 wrote into its copy"
    a, b = _encoder(one_node), _encoder(roots[0])
    assert all(torch.equal(a[k], b[k]) for k in a)  # the same two ranks, the same gloo sums: bitwise
    assert _curve(roots[0]) == _curve(one_node)
    final = [json.loads((root / "metrics" / "pretrain.json").read_text())["final_loss"] for root in (one_node, roots[0])]
    assert final[0] == final[1]


def test_killing_node_1_stops_node_0_and_both_launchers_again_resume(two_process_run, tmp_path, source):
    one_node, _ = two_process_run
    roots = _node_copies(tmp_path, source)
    before = _files(roots[1])
    port = _free_port()  # the rerun uses the same rendezvous, as a job script would
    resume = roots[0] / ".byol" / "resume" / "pretrain-state.pt"
    nodes = _start_nodes(roots, port, tmp_path)
    try:
        deadline = time.monotonic() + 300
        while not resume.exists() and nodes[0].poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        os.killpg(nodes[1].pid, signal.SIGKILL)  # node 1's launcher, its torchrun and its rank
        killed = time.monotonic()
        nodes[1].wait()
        nodes[0].wait(timeout=120)
        stopped = time.monotonic() - killed
    finally:
        _finish(nodes, timeout=1)
    error = (tmp_path / "node0.err").read_text()
    print(f"node 0 stopped {stopped:.1f} s after node 1 was killed")
    assert nodes[0].returncode == 1 and "lost contact with another training process" in error, error[-3000:]
    assert "Traceback" not in error, error[-3000:]
    assert stopped < 60  # measured 2-9 s on 2 busy cores: a closed socket, not a timeout
    assert not _processes_of(roots[0] / "params.yaml") and not _processes_of(roots[1] / "params.yaml")
    assert not (roots[0] / "models" / "encoder.pt").exists(), "the run finished before the kill"
    saved = torch.load(resume, weights_only=True)["epoch"]
    assert 1 <= saved < DDP["pretrain.epochs"]

    again = _start_nodes(roots, port, tmp_path)
    _finish(again)
    errors = [(tmp_path / f"node{rank}.err").read_text() for rank in (0, 1)]
    assert [node.returncode for node in again] == [0, 0], errors
    assert f"resuming from {resume} after epoch {saved}" in errors[0], errors[0][-3000:]
    assert _files(roots[1]) == before, "node 1 wrote into its copy"
    a, b = _encoder(one_node), _encoder(roots[0])
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _curve(roots[0]) == _curve(one_node)
