"""CIFAR-10: 50,000 train and 10,000 test images, 3x32x32, in ten classes."""

from __future__ import annotations

from byol_core.schema.data import DataConfig
from byol_core.data.sources.common import SourceData
from byol_core.data.sources.cifar import CifarSpec, read_cifar

SPEC = CifarSpec(
    what="CIFAR-10",
    folder="cifar-10-batches-py",
    train=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test=("test_batch",),
    meta="batches.meta",
    label_key="labels",
    names_key="label_names",
    downloader="CIFAR10",
)


def read(cfg: DataConfig) -> SourceData:
    return read_cifar(cfg, SPEC)
