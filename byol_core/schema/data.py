"""``data``: which source the scan lists and ingest reads, and how it is converted; and the
params view of each of those two stages."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from byol_core.schema.base import Float, Int, Only, PositiveInt, Section, View, anchored, int_choice
from byol_core.schema.paths import PathsConfig


# data.source -> its reader module in byol_core/data/sources/; the order is the one error messages list.
SOURCES = {
    "fashion-mnist": "fashion_mnist",
    "cifar10": "cifar10",
    "cifar100": "cifar100",
    "stl10": "stl10",
    "imagefolder": "imagefolder",
}

# A folder of this name directly in data.source_dir, for any source, holds extra images for
# pretraining: ingest reads it as the unlabeled split, and the imagefolder reader never
# takes it for a class.
UNLABELED_FOLDER = "unlabeled"


class DataConfig(Section):
    source: Literal[tuple(SOURCES)]  # a reader named in SOURCES (byol_core/data/sources/)
    source_dir: Path  # the folder holding the source files (DVC tracks its listing, paths.listing)
    channels: int_choice(1, 3) | None  # null: the source's own (1 for Fashion-MNIST, else 3)
    image_size: Annotated[Int, Field(ge=8, le=8192)] | None  # null: native size; else short side, centre crop
    test_fraction: Annotated[Float, Field(gt=0.0, lt=1.0)]  # imagefolder without train/ and test/
    on_corrupt: Literal["fail", "skip"]  # an unreadable, too small or non-image file
    max_train: PositiveInt | None  # null: all; else the first N images of the split
    max_test: PositiveInt | None
    max_unlabeled: PositiveInt | None
    shard_mb: Annotated[Float, Field(gt=0.0, le=4096.0)]  # the largest prepared shard file, in MiB

    @field_validator("source_dir", mode="after")
    @classmethod
    def _anchor(cls, value: Path, info: ValidationInfo) -> Path:
        return anchored(value, info, read_only=True)  # only read: it may be a link to another disk

    @model_validator(mode="after")
    def _folder_needs_a_size(self) -> DataConfig:
        if self.source == "imagefolder" and self.image_size is None:
            raise ValueError("data.image_size: an imagefolder source has mixed sizes, so it needs "
                             "an image_size (e.g. 32 or 96)")
        return self

    @property
    def caps(self) -> dict[str, int | None]:
        """Split -> the most images it keeps (None: all). The reader of the split applies it."""
        return {"train": self.max_train, "test": self.max_test, "unlabeled": self.max_unlabeled}


class ScanParams(View):
    """What the scan stage reads: the folder it lists, where the listing goes, and its cache."""

    paths: Annotated[PathsConfig, Only("listing", "cache")]
    data: Annotated[DataConfig, Only("source_dir")]


class IngestParams(View):
    """What the ingest stage reads: the listing it holds the folder to, and the whole data section."""

    paths: Annotated[PathsConfig, Only("prepared", "cache", "listing")]
    data: DataConfig
