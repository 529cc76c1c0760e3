"""Shared helpers: params files derived from the project's own params.yaml."""

from __future__ import annotations

import copy
import gzip
import importlib.util
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from byol_core.data.sources.fashion_mnist import DEBIAN_DIR as DEBIAN_FASHION_MNIST, FILES as FASHION_MNIST_FILES

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())


def _script(name: str):
    """A module of scripts/ (not a package), for tests that use its functions."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CODE_DEPS = _script("code_deps")  # the import probe and the dvc.yaml rewriter

# A network and data small enough for a CPU test: width 8 ResNet-18 with one global average
# (a 64-wide feature), small heads.
TINY = {
    "model.width": 0.125,
    "model.pool": 1,
    "model.projector_hidden": 128,
    "model.projector_out": 32,
    "model.predictor_hidden": 128,
    "data.max_train": 512,
    "data.max_test": 256,
    "pretrain.epochs": 2,
    "pretrain.batch_size": 64,
    "pretrain.warmup_epochs": 0.5,
    "pretrain.monitor_bank": 256,
    "pretrain.monitor_queries": 128,
    "pretrain.log_every": 4,
    "evaluate.max_iter": 50,
    "export.parity_images": 32,
}


def params_dict(**overrides) -> dict:
    """The project's params with dotted-key overrides (``{"pretrain.epochs": 3}``)."""
    raw = copy.deepcopy(DEFAULT_PARAMS)
    for dotted, value in overrides.items():
        node = raw
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node[key]
        node[leaf] = value
    return raw


def write_params(directory: Path, overrides: dict | None = None) -> Path:
    """Write a params.yaml into ``directory`` (its relative paths then live there too)."""
    path = Path(directory) / "params.yaml"
    path.write_text(yaml.safe_dump(params_dict(**(overrides or {})), sort_keys=False))
    return path


def write_idx(path, array):
    """One gzipped IDX file of unsigned bytes (the MNIST format)."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def make_fashion_files(directory, n_train=40, n_test=12, size=28, seed=0):
    """Four IDX files in the official Fashion-MNIST layout, with random content."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        image_file, label_file = FASHION_MNIST_FILES[split]
        write_idx(directory / image_file, rng.integers(0, 256, (n, size, size)))
        write_idx(directory / label_file, rng.integers(0, 10, n))
    return directory


def fashion_mnist_dir() -> Path | None:
    """Where the real Fashion-MNIST files are: the project's data/raw first, then Debian's."""
    for directory in (ROOT / "data" / "raw" / "fashion-mnist", DEBIAN_FASHION_MNIST):
        if all((directory / f).is_file() for pair in FASHION_MNIST_FILES.values() for f in pair):
            return directory
    return None


@pytest.fixture
def tiny_params_file(tmp_path: Path) -> Path:
    return write_params(tmp_path, TINY)


# --- A scratch copy of the project for the real dvc (and Dagster on top of it) ---------

DVC = Path(sys.executable).parent / "dvc"  # set-up links the dvc of .venv-dvc here
SOURCE = "data/raw/fashion-mnist"  # params.yaml's data.source_dir, relative as in the project
TINY_DVC = {**TINY, "data.source_dir": SOURCE, "data.max_train": 256, "data.max_test": 128,
            "pretrain.epochs": 1, "pretrain.monitor_bank": 128, "pretrain.monitor_queries": 64,
            "evaluate.max_iter": 30, "export.parity_images": 16, "checks.images": 64,
            # Random pixels hold nothing to learn: the probe margin check is tested by planting.
            "checks.min_probe_margin": -1.0}


def dvc(root: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([str(DVC), *args], cwd=root, capture_output=True, text=True, timeout=900)
    if ok:
        assert result.returncode == 0, f"dvc {' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


def git(root: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)


def make_project(root: Path, overrides: dict) -> Path:
    """dvc.yaml, .dvc/, dagster.yaml, byol_core/ and a params.yaml with ``overrides`` in a new git
    repository at ``root``, with tiny random Fashion-MNIST-format data as its source."""
    if not DVC.is_file():
        pytest.fail(f"{DVC} is missing: run `make setup` (it installs dvc in .venv-dvc and links it there)")
    root.mkdir(parents=True)
    for name in ("dvc.yaml", ".dvcignore", ".gitignore", "dagster.yaml"):
        shutil.copy2(ROOT / name, root / name)
    (root / ".dvc").mkdir()
    for name in ("config", ".gitignore"):
        shutil.copy2(ROOT / ".dvc" / name, root / ".dvc" / name)
    shutil.copytree(ROOT / "byol_core", root / "byol_core", ignore=shutil.ignore_patterns("__pycache__"))
    write_params(root, overrides)
    make_fashion_files(root / SOURCE, n_train=320, n_test=160)
    git(root, "init", "-q")
    git(root, "config", "user.name", "byol tests")
    git(root, "config", "user.email", "tests@byol.invalid")
    return root


def edit_params(root: Path, dotted: str, value) -> None:
    path = root / "params.yaml"
    raw = yaml.safe_load(path.read_text())
    *parents, leaf = dotted.split(".")
    node = raw
    for key in parents:
        node = node[key]
    node[leaf] = value
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


def rename_param(root: Path, dotted: str, new_leaf: str) -> None:
    path = root / "params.yaml"
    raw = yaml.safe_load(path.read_text())
    section, leaf = dotted.split(".")
    raw[section] = {new_leaf if key == leaf else key: value for key, value in raw[section].items()}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
