"""Shared helpers: params files derived from the project's own params.yaml."""

from __future__ import annotations

import copy
import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import yaml

from byol_core.data import DEBIAN_FASHION_MNIST, FASHION_MNIST_FILES

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())

# A network and data small enough for a CPU test: width 8 ResNet-18, small heads.
TINY = {
    "model.width": 0.125,
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
