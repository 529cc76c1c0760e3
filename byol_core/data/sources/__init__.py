"""Dataset sources: one reader module per ``data.source`` value, each reading its own files
into the same in-memory form (:mod:`byol_core.data.sources.common`).

A reader has ``read(cfg) -> SourceData``. It returns labelled ``train`` and ``test``
splits, and may add an ``unlabeled`` split (label -1) for pretraining, each cut to its
``data.max_*`` cap (``cfg.caps``): the reader applies the cap, since it alone knows how to
stop reading early (the first CIFAR batches, the head of an STL-10 file, the first files
of a folder in sample order). :mod:`byol_core.data.ingest` turns a ``SourceData`` into the
prepared format, so every source gets the same conversion, duplicate count, manifest and
card.

The registry's names (which ``data.source`` values exist, and the ``unlabeled/`` folder's
name) live in :mod:`byol_core.schema.data`, so params validation reads them without
importing a reader, and the schema never imports this package.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from byol_core.schema.data import SOURCES, UNLABELED_FOLDER  # noqa: F401 (the registry, named in the schema)


def reader(name: str) -> ModuleType:
    """The reader module of source ``name`` (a key of :data:`SOURCES`)."""
    return importlib.import_module(f"{__name__}.{SOURCES[name]}")
