"""Dataset sources: one reader module per ``data.source`` value, each reading its own files
into the same in-memory form (:mod:`byol_core.sources.common`).

A reader has ``read(cfg) -> SourceData``. It returns labelled ``train`` and ``test``
splits, and may add an ``unlabeled`` split (label -1) for pretraining, each cut to its
``data.max_*`` cap (``cfg.caps``): the reader applies the cap, since it alone knows how to
stop reading early (the first CIFAR batches, the head of an STL-10 file, the first files
of a folder in sample order). :mod:`byol_core.ingest` turns a ``SourceData`` into the
prepared format, so every source gets the same conversion, duplicate count, manifest and
card.

This module holds names only, so params validation (:mod:`byol_core.schema.data`) reads
the registry without importing a reader.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# data.source -> its reader module in this package; the order is the one error messages list.
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


def reader(name: str) -> ModuleType:
    """The reader module of source ``name`` (a key of :data:`SOURCES`)."""
    return importlib.import_module(f"{__name__}.{SOURCES[name]}")
