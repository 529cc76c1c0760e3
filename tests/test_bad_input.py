"""Every bad input the pipeline knows of, through the ``byol`` command: a clear message that
names the file or key and says what to do, exit code 1, and nothing written or changed.

Each case starts from a healthy project (ingested data, an encoder, metrics), breaks one
thing, runs one stage, and compares every file under the project before and after. The
table in docs/bad-input.md lists the same cases; a test checks it names each one with its
message. ``python tests/test_bad_input.py`` prints the table from the real messages.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import pickle
import re
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from byol_core.train.checkpoint import save_encoder
from byol_core.cli import main
from byol_core.config import load_params
from byol_core.data.ingest import ingest
from byol_core.train.nets import EncoderSpec, build_encoder
from byol_core.promote import with_digest
from byol_core.data.sources.fashion_mnist import FILES
from byol_core.io.storage import write_json
from conftest import ROOT, TINY, make_fashion_files, write_idx, write_params
from sourcefiles import cifar_batch_with_labels, make_cifar10, make_imagefolder, png_claiming

DOC = ROOT / "docs" / "bad-input.md"
BASE = {**TINY, "data.max_train": None, "data.max_test": None, "pretrain.batch_size": 16,
        "pretrain.monitor_bank": 16, "pretrain.monitor_queries": 8, "export.parity_images": 8}


class _Payload:
    def __reduce__(self):  # unpickling this would run a shell command
        return (__import__("os").system, ("touch pwned",))


@dataclass(frozen=True)
class Case:
    name: str  # how the docs table names it
    stage: str
    fragment: str  # a regex the message must match (also checked against the docs row)
    params: dict | None = None  # overrides for params.yaml (None: keep)
    breaks: object = None  # callable(root) that breaks a file, run after params are written


def _swap_data(root: Path, **overrides) -> dict:
    return {"data.source_dir": "src2", **overrides}


def _folder(root: Path, **kwargs) -> Path:
    make_imagefolder(root / "src2", **kwargs)
    return root / "src2"


def _encoder(root: Path, spec: EncoderSpec, edit=None) -> None:
    torch.manual_seed(0)
    save_encoder(root / "models" / "encoder.pt", build_encoder(spec), spec,
                 {"size": 28, "mean": [0.5] * spec.in_channels, "std": [0.25] * spec.in_channels})
    if edit:
        edit(root / "models" / "encoder.pt")


def _retarget_spec(path: Path) -> None:
    blob = torch.load(path, weights_only=True)
    blob["spec"]["width"] = 0.25
    torch.save(blob, path)


def _onnx(root: Path, bare: bool = False) -> None:
    """A real export of the project's encoder; ``bare``: without the metadata that says how
    to prepare its input (as an older version wrote it)."""
    from byol_core import stages

    params = load_params(root / "params.yaml")
    if not bare:
        stages.run("export", params)
        return
    from byol_core.export import export_onnx
    from byol_core.train.checkpoint import load_encoder

    encoder, _, _ = load_encoder(params.paths.encoder)
    export_onnx(encoder, torch.zeros(2, 1, 28, 28), params.paths.onnx, 20, 64, {})


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _append_param(root: Path, text: str) -> None:
    with open(root / "params.yaml", "a") as handle:
        handle.write(text)


def _idx_header_only(path: Path, dims: tuple[int, ...]) -> None:
    """An image IDX file whose header claims ``dims`` (followed by a few pixels)."""
    header = struct.pack(">BBBB", 0, 0, 0x08, len(dims)) + struct.pack(f">{len(dims)}I", *dims)
    with gzip.open(path, "wb") as handle:
        handle.write(header + bytes(64))


def _edit_encoder(edit):
    def apply(path: Path) -> None:
        blob = torch.load(path, weights_only=True)
        edit(blob)
        torch.save(blob, path)
    return apply


def _nan_weights(blob: dict) -> None:
    first = next(k for k, v in blob["state_dict"].items() if v.is_floating_point())
    blob["state_dict"][first] = torch.full_like(blob["state_dict"][first], float("nan"))


def _old_store(root: Path) -> None:
    prepared = root / "data" / "prepared"
    (prepared / "store.json").unlink()
    np.save(prepared / "train_images.npy", np.zeros((40, 1, 28, 28), np.uint8))


def _start(root: Path, named: bool = False, **model) -> None:
    """A promoted training state of the tiny model (``model``: other model keys) at paths.start;
    ``named``: params.yaml's init_sha256 set to its digest."""
    from byol_core.train.resume import save_state, state_record
    from byol_core.config import parse_params
    from byol_core.train.step import Recipe, new_state
    from conftest import params_dict

    params = parse_params(params_dict(**{**BASE, **model}))
    state = new_state(params, 1, Recipe.for_run(params.pretrain, 40), torch.device("cpu"))
    start = root / "models" / "start" / "checkpoint.pt"
    save_state(start, state_record(state, "key", params))
    if named:
        text = (root / "params.yaml").read_text()
        (root / "params.yaml").write_text(with_digest(text, hashlib.sha256(start.read_bytes()).hexdigest()))


def _flip_last_byte(path: Path) -> None:
    """One byte changed in place, past any header: the file reads as well as before."""
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def _relabel(root: Path) -> None:
    path = root / "data" / "prepared" / "train-labels.npy"
    labels = np.load(path)
    labels[0] = (labels[0] + 1) % 10  # another valid class: only the record can tell
    np.save(path, labels)


def _damage_cache(root: Path) -> None:
    """An image-folder ingest (the cache holds image files only), then a byte flipped in its pack."""
    _folder(root)
    params = load_params(root / "params.yaml")
    ingest(params.data, params.paths.prepared, params.paths.cache)
    _flip_last_byte(next(params.paths.cache.glob("images-*/pack-*.u8")))


def _damage_embeddings(root: Path) -> None:
    from byol_core import stages

    _onnx(root)
    stages.run("embed", load_params(root / "params.yaml"))
    _flip_last_byte(root / "data" / "embeddings" / "vectors.npy")


WARM = {"pretrain.init": "previous", "pretrain.init_sha256": "0" * 64}


def _fashion_variant(root: Path, edit) -> None:
    make_fashion_files(root / "src2")
    edit(root / "src2")


def _changed_since_scan(root: Path) -> None:
    """A scan of the source, then one file added and one rewritten before ingest reads them."""
    make_fashion_files(root / "src2")
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(["scan", "--params", str(root / "params.yaml")]) == 0
    (root / "src2" / "extra.gz").write_bytes(b"arrived after the scan")
    _truncate(root / "src2" / FILES["train"][1])


def _rewritten_since_scan(root: Path) -> None:
    """An image folder scanned, then one image rewritten in place (its folder's mtime stays, so
    ingest trusts the scan's record) before ingest converts it."""
    folder = _folder(root)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(["scan", "--params", str(root / "params.yaml")]) == 0
    image = sorted(path for path in (folder / "cat").iterdir() if path.is_file())[0]
    image.write_bytes(image.read_bytes() + b"\0")


CASES = [
    Case("unknown source name", "ingest", r"data\.source: Input should be 'fashion-mnist', 'cifar10'",
         {"data.source": "mnist"}),
    Case("missing source folder", "ingest", r"data\.source_dir .*src2 does not exist\. Point it at a folder",
         _swap_data(None, **{"data.source": "imagefolder", "data.image_size": 16})),
    Case("empty source folder", "ingest", r"src2 holds no class folders\. Put each class's images in a folder",
         _swap_data(None, **{"data.source": "imagefolder", "data.image_size": 16}),
         lambda root: (root / "src2").mkdir()),
    Case("source folder that is a file", "scan", r"data\.source_dir .*src2 is a file, not a folder\. Point it at the folder",
         _swap_data(None), lambda root: (root / "src2").write_text("not a folder")),
    Case("source folder changed since the scan", "ingest",
         r"data\.source_dir .*src2 changed since .*source\.parquet was written: 1 added \(extra\.gz\); 1 changed "
         r"\(train-labels-idx1-ubyte\.gz\)\. Run `byol scan`", _swap_data(None), _changed_since_scan),
    Case("image rewritten in place since the scan", "ingest",
         r"src2/cat/\S+: changed since data\.source_dir was listed\. Run `byol scan` to list it as it is now",
         _swap_data(None, **{"data.source": "imagefolder", "data.image_size": 16}), _rewritten_since_scan),
    Case("Fashion-MNIST folder with some files missing", "ingest",
         r"data\.source_dir .*src2 lacks train-labels-idx1-ubyte\.gz for Fashion-MNIST\. `make setup` copies",
         _swap_data(None), lambda root: _fashion_variant(root, lambda d: (d / FILES["train"][1]).unlink())),
    Case("class folder with no images", "ingest", r"class folder 'bird' holds no images\. Add images or remove",
         _swap_data(None, **{"data.source": "imagefolder", "data.image_size": 16}),
         lambda root: (_folder(root) / "bird").mkdir()),
    Case("corrupt image", "ingest", r"src2/cat/000\.png: cannot be read as an image .*set data\.on_corrupt: skip",
         _swap_data(None, **{"data.source": "imagefolder", "data.image_size": 16}),
         lambda root: (_folder(root) / "cat" / "000.png").write_bytes(b"not a png")),
    Case("symlink loop in a class folder", "ingest",
         r"src2/cat/sub/loop: a symlink back to <project>/src2/cat, a folder that contains it, so reading the folder "
         r"would never end\. Remove the link",
         _swap_data(None, **{"data.source": "imagefolder", "data.image_size": 16}),
         lambda root: os.symlink("..", _folder(root) / "cat" / "sub" / "loop")),
    Case("unsupported file type", "ingest",
         r"src2/dog/notes\.docx: unsupported file type '\.docx' .*Convert or remove it, or set data\.on_corrupt: skip",
         _swap_data(None, **{"data.source": "imagefolder", "data.image_size": 16}),
         lambda root: (_folder(root) / "dog" / "notes.docx").write_bytes(b"PK")),
    Case("image smaller than the crop", "ingest",
         r"src2/[\w/]+\.\w+: \d+x\d+ px is smaller than data\.image_size 64 .*lower data\.image_size",
         _swap_data(None, **{"data.source": "imagefolder", "data.image_size": 64}), lambda root: _folder(root)),
    Case("16-bit image too large to decode", "ingest",
         r"src2/cat/000\.png: cannot be read as an image \(Image size \(\d+ pixels\) exceeds limit of \d+ pixels.*"
         r"set data\.on_corrupt: skip",
         _swap_data(None, **{"data.source": "imagefolder", "data.image_size": 16}),
         lambda root: png_claiming(_folder(root) / "cat" / "000.png", 20000, 10000, "I;16")),
    Case("source smaller than data.image_size", "ingest",
         r"images are 28x28 px, smaller than data\.image_size 32\. Images are never upscaled",
         {"data.image_size": 32}),
    Case("truncated IDX .gz", "ingest", r"train-images-idx3-ubyte\.gz: .*truncated or corrupt",
         _swap_data(None), lambda root: _fashion_variant(
             root, lambda d: (d / FILES["train"][0]).write_bytes((d / FILES["train"][0]).read_bytes()[:300]))),
    Case("image/label count mismatch", "ingest", r"train has 40 images but 39 labels .*Fetch matching files",
         _swap_data(None), lambda root: _fashion_variant(
             root, lambda d: write_idx(d / FILES["train"][1], np.zeros(39)))),
    Case("CIFAR batch that would run code", "ingest",
         r"data_batch_1: refers to posix\.system, which a CIFAR batch never does; refusing to load it",
         _swap_data(None, **{"data.source": "cifar10"}), lambda root: (
             make_cifar10(root / "src2"),
             (root / "src2" / "cifar-10-batches-py" / "data_batch_1").write_bytes(pickle.dumps(_Payload())))),
    Case("CIFAR batch with far more labels than images", "ingest",
         r"data_batch_1: holds more than \d+ pickle entries, more than a CIFAR file of \d+ bytes \(room for \d+ images\) "
         r"needs; refusing to load it",
         _swap_data(None, **{"data.source": "cifar10"}), lambda root: (
             make_cifar10(root / "src2"),
             cifar_batch_with_labels(root / "src2" / "cifar-10-batches-py" / "data_batch_1", 1_000_000))),
    Case("wrong channel count for the model", "evaluate",
         r"encoder\.pt expects 3-channel images but the prepared data has 1\. Run `byol pretrain`",
         None, lambda root: _encoder(root, EncoderSpec("resnet18", 0.125, 3, True))),
    Case("data.channels not 1 or 3", "ingest", r"data\.channels: Input should be 1 or 3", {"data.channels": 2}),
    Case("typo'd key", "pretrain", r"pretrain\.epoch: unknown key \(did you mean 'pretrain\.epochs'\?\)",
         {"pretrain.epoch": 3}),
    Case("negative epochs", "pretrain", r"pretrain\.epochs: Input should be greater than or equal to 1",
         {"pretrain.epochs": -2}),
    Case("a boolean for a number", "pretrain", r"pretrain\.epochs: Input should be a valid integer \(got True\)",
         {"pretrain.epochs": True}),
    Case("batch larger than the data", "pretrain",
         r"pretrain\.batch_size \(128\) is larger than the 40 prepared training images: lower",
         {"pretrain.batch_size": 128}),
    Case("tau outside [0, 1]", "pretrain", r"pretrain\.tau_base: Input should be less than or equal to 1",
         {"pretrain.tau_base": 1.5}),
    Case("path leaving the project", "evaluate", r"paths\.metrics: '\.\./elsewhere' leads outside the project folder",
         {"paths.metrics": "../elsewhere"}),
    Case("output folder not writable", "ingest", r"cannot (create directory|write under) .*blocker",
         {"paths.prepared": "blocker/prepared"}, lambda root: (root / "blocker").write_text("a file")),
    Case("output folder not ours", "ingest", r"refusing to replace .*mine: it exists but has no card\.json",
         {"paths.prepared": "mine"}, lambda root: ((root / "mine").mkdir(), (root / "mine" / "notes.txt").write_text("x"))),
    Case("checkpoint from another architecture", "evaluate",
         r"encoder\.pt: weights do not fit the saved architecture .*Run `byol pretrain` to make it",
         None, lambda root: _encoder(root, EncoderSpec("resnet18", 0.125, 1, True), _retarget_spec)),
    Case("corrupt or truncated encoder", "export", r"encoder\.pt is not a readable encoder file .*Run `byol pretrain`",
         None, lambda root: _truncate(root / "models" / "encoder.pt")),
    Case("corrupt or truncated resume state", "pretrain",
         r"pretrain-state\.pt is not a readable training checkpoint .*Delete it to start pretraining afresh",
         None, lambda root: ((root / ".byol" / "resume").mkdir(parents=True),
                             (root / ".byol" / "resume" / "pretrain-state.pt").write_bytes(b"PK\x03\x04cut"))),
    Case("checkpoint that would run code", "evaluate", r"encoder\.pt is not a readable encoder file \(it holds Python objects .* could run code .*refused\)",
         None, lambda root: (root / "models" / "encoder.pt").write_bytes(pickle.dumps(_Payload()))),
    Case("duplicate key in params.yaml", "ingest", r"params\.yaml: not valid YAML \(key 'seed' appears twice",
         None, lambda root: _append_param(root, "seed: 1\n")),
    Case("device with a non-ASCII digit", "pretrain", r"device: must be auto, cpu, cuda or cuda:N", {"device": "cuda:\u0663"}),
    Case("infinite crop ratio", "pretrain", r"augment\.crop_ratio\.1: Input should be a finite number",
         {"augment.crop_ratio": [0.75, float("inf")]}),
    Case("huge value in params", "ingest", r"data\.source: Input should be .*\.\.\. \(100002 characters\)",
         {"data.source": "x" * 100000}),
    Case("heads too large to allocate", "pretrain",
         r"model: \d+M trainable parameters need [\d.]+ GiB .* GiB free\. Lower model\.width or model\.projector_hidden",
         {"model.arch": "resnet50", "model.width": 4.0, "model.projector_hidden": 65536,
          "model.projector_out": 65536, "model.predictor_hidden": 65536}),
    Case("IDX header with a zero height", "ingest",
         r"train-images-idx3-ubyte\.gz: IDX header gives the impossible shape \(40, 0, 28\)\. The file is corrupt",
         _swap_data(None), lambda root: _fashion_variant(root, lambda d: _idx_header_only(d / FILES["train"][0], (40, 0, 28)))),
    Case("IDX header whose dimensions overflow", "ingest",
         r"train-images-idx3-ubyte\.gz: IDX header gives the impossible shape \(2147483648, 2147483648, 2147483648\)",
         _swap_data(None), lambda root: _fashion_variant(
             root, lambda d: _idx_header_only(d / FILES["train"][0], (2**31, 2**31, 2**31)))),
    Case("cut card.json", "pretrain", r"card\.json: cannot read the dataset card .*Run `byol ingest` again",
         None, lambda root: _truncate(root / "data" / "prepared" / "card.json")),
    Case("prepared labels out of range", "evaluate",
         r"train-labels\.npy: labels outside the card's 10 classes\. Run `byol ingest` again",
         None, lambda root: np.save(root / "data" / "prepared" / "train-labels.npy", np.full(40, 12, np.int64))),
    Case("cut image shard", "pretrain", r"train-00000\.npy: cannot read image shard .*Run `byol ingest` again",
         None, lambda root: _truncate(root / "data" / "prepared" / "train-00000.npy")),
    Case("prepared data in the old format", "pretrain", r"old single-file format .*Run `byol ingest` again to rewrite",
         None, _old_store),
    Case("encoder with non-finite weights", "export",
         r"encoder\.pt: the weights of \S+ are not finite \(NaN or infinity\)",
         None, lambda root: _encoder(root, EncoderSpec("resnet18", 0.125, 1, True), _edit_encoder(_nan_weights))),
    Case("encoder without its spec", "evaluate", r"encoder\.pt: not a valid encoder file \(the spec is a NoneType",
         None, lambda root: _encoder(root, EncoderSpec("resnet18", 0.125, 1, True),
                                     _edit_encoder(lambda blob: blob.pop("spec")))),
    Case("embed without an ONNX file", "embed", r"encoder\.onnx: no ONNX model there\. Run `byol export` to make it",
         None),
    Case("damaged ONNX file", "embed", r"encoder\.onnx: not a usable ONNX model .*Run `byol export` again",
         None, lambda root: (root / "models" / "encoder.onnx").write_bytes(b"\x08\x07garbage" * 100)),
    Case("ONNX file without its input description", "embed",
         r"encoder\.onnx: no usable input description in the model's metadata .*run `byol export` again",
         None, lambda root: _onnx(root, bare=True)),
    Case("embeddings folder that is not the stage's", "embed",
         r"refusing to replace <project>/src: it exists but has no card\.json",
         {"paths.embeddings": "src"}, _onnx),
    Case("warm start without a digest", "pretrain",
         r"pretrain: init is previous but init_sha256 is null: run `byol promote`", {"pretrain.init": "previous"}),
    Case("warm start with no start file", "pretrain",
         r"no start file at <project>/models/start/checkpoint\.pt \(paths\.start\)\. Run `byol promote`", WARM),
    Case("warm start from a file with another digest", "pretrain",
         r"checkpoint\.pt: its sha256 is [0-9a-f]{64}, but params\.yaml's pretrain\.init_sha256 is 0{64}.*`dvc pull`",
         WARM, _start),
    Case("warm start from another architecture", "pretrain",
         r"checkpoint\.pt: the promoted state has another architecture than this run \(model\.width: 0\.25 there, "
         r"0\.125 here\)\. Set pretrain\.init: scratch", WARM, lambda root: _start(root, True, **{"model.width": 0.25})),
    Case("promote with no checkpoint", "promote",
         r"training checkpoint not found at <project>/models/checkpoint\.pt\. Run `byol pretrain`"),
    Case("image shard changed since ingest", "verify",
         r"train-00000\.npy: 1 of its 40 images differs from the digests recorded when it was written\. Delete it, "
         r"then restore it with `dvc checkout ingest` or run `byol ingest` again",
         None, lambda root: _flip_last_byte(root / "data" / "prepared" / "train-00000.npy")),
    Case("label file changed since ingest", "verify",
         r"train-labels\.npy: 1 of its 40 labels differs from those recorded in manifest\.parquet\. Delete it",
         None, _relabel),
    Case("damaged conversion cache entry", "verify",
         r"\.byol/cache/images-3x16-v\d+: 1 of its 12 entries is damaged \(the pixels differ from the digest .*"
         r"Delete that folder \(the next `byol ingest` converts its files again\)",
         _swap_data(None, **{"data.source": "imagefolder", "data.image_size": 16}), _damage_cache),
    Case("embeddings changed since embed", "verify",
         r"embeddings/vectors\.npy: its sha256 differs from the one recorded when it was written\. Delete it, then "
         r"restore it with `dvc checkout embed` or run `byol embed` again", None, _damage_embeddings),
    Case("ONNX parity failure", "export",
         r"onnxruntime \(CPUExecutionProvider\) disagrees with PyTorch: max abs diff .* exceeds atol=1e-12",
         {"export.atol": 1e-12, "export.rtol": 0.0}),
]


def _snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` (symlinks not followed) -> a hash of its bytes. Ingest's
    conversion cache is left out: it is no output, and keeping the conversions a failed
    ingest made is what it is for."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()
            and not p.relative_to(root).as_posix().startswith(".byol/cache/")}


@pytest.fixture(scope="module")
def healthy(tmp_path_factory):
    """Ingested tiny data, an encoder that fits it, and metrics from an earlier run."""
    return _healthy_project(tmp_path_factory.mktemp("healthy"))


def _healthy_project(root: Path) -> Path:
    make_fashion_files(root / "src")
    params = load_params(write_params(root, {**BASE, "data.source_dir": "src"}))
    ingest(params.data, params.paths.prepared, params.paths.cache)
    _encoder(root, EncoderSpec("resnet18", 0.125, 1, True))
    write_json(params.paths.eval_metrics, {"linear_top1": 0.5})
    return root


def _run_case(case: Case, root: Path, healthy: Path) -> str:
    """Copy the healthy project, break it, run the stage; returns the message (paths as <project>)."""
    shutil.copytree(healthy, root, dirs_exist_ok=True)
    overrides = {**BASE, "data.source_dir": "src", **(case.params or {})}
    Path(root / "params.yaml").write_text(yaml.safe_dump(_params_dict(overrides), sort_keys=False))
    if case.breaks:
        case.breaks(root)
    before = _snapshot(root)
    with contextlib.redirect_stderr(io.StringIO()) as stderr:
        code = main([case.stage, "--params", str(root / "params.yaml")])
    err = stderr.getvalue()
    assert code == 1, err
    assert not (root / "pwned").exists() and not Path("pwned").exists()
    after = _snapshot(root)
    assert after == before, f"files changed: {set(after.items()) ^ set(before.items())}"
    message = " ".join(line.strip() for line in err.strip().splitlines())  # one line for the table
    message = message.removeprefix(f"byol {case.stage}: error: ")
    return message.replace(str(root), "<project>").replace(str(root.parent), "<project>/..")


def _params_dict(overrides: dict) -> dict:
    from conftest import params_dict

    raw = params_dict(**{k: v for k, v in overrides.items() if k != "pretrain.epoch"})
    if "pretrain.epoch" in overrides:  # a typo: a key the schema does not know
        raw["pretrain"]["epoch"] = overrides["pretrain.epoch"]
    return raw


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_refused_cleanly(case, tmp_path, healthy):
    message = _run_case(case, tmp_path / "project", healthy)
    assert re.search(case.fragment, message), message
    assert "Traceback" not in message


def test_docs_table_lists_every_case_with_its_message():
    rows = {}
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) == 3 and cells[0] not in ("case", "---"):
            rows[cells[0]] = (cells[1].strip("`"), cells[2].replace("\\|", "|"))
    assert set(rows) == {c.name for c in CASES}
    for case in CASES:
        stage, message = rows[case.name]
        assert stage == f"byol {case.stage}", case.name
        assert re.search(case.fragment, message.strip("`")), (case.name, message)


def _table(tmp: Path) -> str:
    """The docs table, from the real messages (run: python tests/test_bad_input.py)."""
    healthy = _healthy_project(tmp / "healthy")
    lines = ["| case | command | message |", "| --- | --- | --- |"]
    for i, case in enumerate(CASES):
        message = _run_case(case, tmp / f"case{i}", healthy)
        lines.append(f"| {case.name} | `byol {case.stage}` | {message.replace('|', chr(92) + '|')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        print(_table(Path(tmp)))
