"""Fuzzing every reader: truncated, bit-flipped, oversized-header and wrong-type variants of
real files (tests/fuzz_cases.py), each read in a worker process whose address space is
capped. Every variant must give a valid result or a clean ByolError that names the file:
no other exception, no crash, no hang, no allocation past the cap."""

import multiprocessing
import queue
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from byol_core.train.checkpoint import save_encoder
from byol_core.config import load_params
from byol_core.export import export_onnx
from byol_core.data.ingest import ingest
from byol_core.train.nets import EncoderSpec, build_encoder
from byol_core.train.resume import run_key, save_state, state_record
from byol_core.train.step import Recipe, new_state
from conftest import TINY, make_fashion_files, write_params
from fuzz_cases import build_cases, worker
from sourcefiles import image_of, make_cifar10, make_stl10

CASE_SECONDS = 60  # a reader that takes longer than this on a few-KB file hangs


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    src = make_fashion_files(root / "src", n_train=40, n_test=12)
    params = load_params(write_params(root, {**TINY, "data.source_dir": str(src), "pretrain.batch_size": 8}))
    ingest(params.data, params.paths.prepared, params.paths.cache)
    rng = np.random.default_rng(0)
    image_of("RGB", 40, 52, rng).save(root / "image.png")
    image_of("RGB", 40, 52, rng).save(root / "image.jpg", quality=90)
    make_cifar10(root / "cifar", per_batch=3, test=2)
    make_stl10(root / "stl")
    spec = EncoderSpec(arch="resnet18", width=0.125, in_channels=1, small_stem=True)
    encoder = build_encoder(spec)
    save_encoder(root / "encoder.pt", encoder, spec, {"size": 28, "mean": [0.5], "std": [0.25]})
    state = new_state(params, 1, Recipe.for_run(params.pretrain, 40), torch.device("cpu"))
    save_state(root / "pretrain-state.pt", state_record(state, run_key(params, "0" * 16, torch.device("cpu")), params))
    export_onnx(encoder, torch.zeros(2, 1, 28, 28), root / "encoder.onnx", 20, 16, {})
    files = {"idx": src / "train-images-idx3-ubyte.gz", "cifar": root / "cifar" / "cifar-10-batches-py" / "data_batch_1",
             "stl": root / "stl", "png": root / "image.png", "jpeg": root / "image.jpg",
             "prepared": params.paths.prepared, "encoder": root / "encoder.pt",
             "state": root / "pretrain-state.pt", "onnx": root / "encoder.onnx"}
    return build_cases(root / "variants", files)


def _run_all(cases: list[dict]) -> dict[int, tuple[str, str]]:
    """Outcome per case: ("ok" | "clean" | "bad" | "hang" | "crash", detail). A hang or a
    crash ends the worker; a new one takes the cases after it."""
    context = multiprocessing.get_context("spawn")
    outcomes: dict[int, tuple[str, str]] = {}
    todo = list(range(len(cases)))
    while todo:
        report = context.Queue()
        process = context.Process(target=worker, args=([cases[i] for i in todo], report), daemon=True)
        process.start()
        current = None
        try:
            while True:
                try:
                    message = report.get(timeout=CASE_SECONDS if current is not None else 120)
                except queue.Empty:
                    outcomes[todo[current if current is not None else 0]] = (
                        "hang" if process.is_alive() else "crash", f"exit code {process.exitcode}")
                    break
                if message[0] == "done":
                    break
                if message[0] == "start":
                    current = message[1]
                else:
                    outcomes[todo[message[0]]] = (message[1], message[2])
        finally:
            process.kill()
            process.join()
        todo = [i for i in todo if i not in outcomes]
    return outcomes


def test_every_reader_survives_damaged_files(cases):
    outcomes = _run_all(cases)
    per_reader = Counter(case["reader"] for case in cases)
    assert len(cases) >= 100 and set(per_reader) == {"idx", "cifar", "stl", "png", "jpeg", "prepared", "encoder",
                                                      "state", "onnx"}
    failures = [f"{cases[i]['reader']} / {cases[i]['variant']}: {kind}: {detail}"
                for i, (kind, detail) in sorted(outcomes.items()) if kind not in ("ok", "clean")]
    assert not failures, "\n\n".join(failures)
    for i, (kind, detail) in outcomes.items():
        if kind == "clean":  # the message names the damaged file (or its folder)
            assert Path(cases[i]["path"]).parent.name in detail, (cases[i], detail)
            assert len(detail) < 1500, detail
    refused = Counter(cases[i]["reader"] for i, (kind, _) in outcomes.items() if kind == "clean")
    assert refused["idx"] >= 15 and refused["prepared"] >= 12 and refused["encoder"] >= 15
