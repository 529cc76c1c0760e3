"""CIFAR-100: 50,000 train and 10,000 test images, 3x32x32, labelled with the 100 fine
classes (the 20 coarse superclasses are not used)."""

from __future__ import annotations

from byol_core.schema.data import DataConfig
from byol_core.data.sources.common import SourceData
from byol_core.data.sources.cifar import CifarSpec, read_cifar

SPEC = CifarSpec(
    what="CIFAR-100",
    folder="cifar-100-python",
    train=("train",),
    test=("test",),
    meta="meta",
    label_key="fine_labels",
    names_key="fine_label_names",
    downloader="CIFAR100",
)


def read(cfg: DataConfig) -> SourceData:
    return read_cifar(cfg, SPEC)
