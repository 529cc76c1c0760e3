"""CIFAR-10 and CIFAR-100 in the "python version" layout that torchvision downloads.

``data.source_dir`` is the torchvision root: it holds ``cifar-10-batches-py/`` or
``cifar-100-python/``. Each batch file is a pickled dict of ``data`` ((N, 3072) uint8, row
major: 1024 red, 1024 green, 1024 blue) and a list of labels. A pickle can run code when
loaded, so the files are read with :class:`_BatchUnpickler`, which builds nothing but the
numpy arrays and plain containers an official batch holds. :mod:`.cifar10` and
:mod:`.cifar100` are the two source modules; everything they share lives here.
"""

from __future__ import annotations

import os
import pickle
import pickletools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from byol_core.errors import ByolError
from byol_core.schema.data import DataConfig
from byol_core.data.sources.common import SourceData, ensure_local

SIDE = 32
ROW = 3 * SIDE * SIDE
# A pickle's entries (opcodes) a CIFAR file may hold: per image of its 'data' (its label or
# two, its file name, memo entries: an official batch has 3 to 4, a protocol-2 re-save from
# Python 3 about 10), and a base for the keys and the meta file's class names.
ENTRIES_PER_IMAGE = 16
ENTRIES_BASE = 10_000

# Every global an official batch refers to: numpy's array rebuild (under its numpy 1 and
# numpy 2 module names), and ``_codecs.encode``, which Python 3 writes for ``bytes`` in a
# protocol-2 pickle (a re-saved batch). None of them can do more than build data.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


@dataclass(frozen=True)
class CifarSpec:
    """What differs between CIFAR-10 and CIFAR-100."""

    what: str  # "CIFAR-10"
    folder: str  # the folder torchvision extracts under its root
    train: tuple[str, ...]  # batch files of the train split, in order
    test: tuple[str, ...]
    meta: str
    label_key: str  # the labels' key in a batch
    names_key: str  # the class names' key in the meta file
    downloader: str  # the torchvision.datasets class that fetches it

    @property
    def required(self) -> list[str]:
        return [f"{self.folder}/{name}" for name in (*self.train, *self.test, self.meta)]


class _BatchUnpickler(pickle.Unpickler):
    def __init__(self, handle, path: Path):
        super().__init__(handle, encoding="latin1")
        self.path = path

    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise ByolError(f"{self.path}: refers to {module}.{name}, which a CIFAR batch never does; "
                            "refusing to load it (a pickle can run code). Fetch the official files.")
        return super().find_class(module, name)


def _count_entries(handle, path: Path) -> None:
    """Refuse a pickle with more entries than a CIFAR file of its size can need, before any
    is built. Each image takes ROW bytes of 'data', so a file of S bytes holds at most
    S // ROW images; but one byte of pickle can add an item to a list (or to the
    unpickler's stack), 8 bytes of memory or more: a batch of 10^8 one-byte labels is a
    100 MB file that would unpickle into 800 MB of list. Counting streams the file."""
    size = os.fstat(handle.fileno()).st_size
    images = size // ROW
    limit = ENTRIES_PER_IMAGE * images + ENTRIES_BASE
    for count, _ in enumerate(pickletools.genops(handle), 1):
        if count > limit:
            raise ByolError(f"{path}: holds more than {limit} pickle entries, more than a CIFAR file of {size} bytes "
                            f"(room for {images} images) needs; refusing to load it (its lists would take memory out of "
                            "all proportion to its size). The file is corrupt: fetch the official files.")
    handle.seek(0)


def load_pickle(path: Path) -> dict[str, object]:
    """The dict in a CIFAR pickle, with ``str`` keys whether it was written with ``bytes``
    (Python 2, or ``encoding="bytes"`` re-saves) or ``str`` keys. Its entries are counted
    first (:func:`_count_entries`)."""
    try:
        with open(path, "rb") as handle:
            _count_entries(handle, path)
            entry = _BatchUnpickler(handle, path).load()
    except ByolError:
        raise
    except OSError as exc:
        raise ByolError(f"{path}: cannot be read ({exc.strerror or exc}). Fetch it again.") from None
    except Exception as exc:  # noqa: BLE001 - any other failure means damaged bytes
        raise ByolError(f"{path}: not a readable CIFAR pickle ({type(exc).__name__}: {exc}). The file is "
                        "truncated or corrupt: delete it and fetch it again.") from None
    if not isinstance(entry, dict):
        raise ByolError(f"{path}: holds a {type(entry).__name__}, not the dict of a CIFAR file. "
                        "Fetch the official files.")
    return {key.decode("latin1") if isinstance(key, bytes) else str(key): value for key, value in entry.items()}


def _field(entry: dict, key: str, path: Path):
    if key not in entry:
        raise ByolError(f"{path}: has no '{key}' entry (it has {', '.join(sorted(entry)) or 'none'}). "
                        "Is it the right CIFAR version? Fetch the official files.")
    return entry[key]


def read_batch(path: Path, label_key: str, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One batch file: uint8 images (N, 3, 32, 32) and int64 labels (N,), checked."""
    entry = load_pickle(path)
    data = _field(entry, "data", path)
    labels = np.asarray(_field(entry, label_key, path))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != ROW:
        shape = getattr(data, "shape", type(data).__name__)
        raise ByolError(f"{path}: 'data' should be uint8 rows of {ROW} values (3x{SIDE}x{SIDE}), got "
                        f"{shape} {getattr(data, 'dtype', '')}. The file is corrupt: fetch it again.")
    if labels.ndim != 1 or len(labels) != len(data):
        raise ByolError(f"{path}: {len(data)} images but {labels.size} '{label_key}'. The file is "
                        "corrupt: fetch it again.")
    if not np.issubdtype(labels.dtype, np.integer) or (labels.size and (labels.min() < 0 or labels.max() >= classes)):
        raise ByolError(f"{path}: '{label_key}' must be integers 0..{classes - 1}. The file is corrupt: "
                        "fetch it again.")
    return data.reshape(-1, 3, SIDE, SIDE), labels.astype(np.int64)


def read_classes(path: Path, key: str) -> list[str]:
    names = _field(load_pickle(path), key, path)
    if not isinstance(names, list) or not names or not all(isinstance(n, (str, bytes)) for n in names):
        raise ByolError(f"{path}: '{key}' should be a list of class names. Fetch the official files.")
    return [n.decode("latin1") if isinstance(n, bytes) else n for n in names]


def _read_split(folder: Path, spec: CifarSpec, files: tuple[str, ...], cap: int | None, classes: int):
    """The split's batches in order, stopping once ``cap`` images are in hand (a capped
    run does not unpickle all five train batches)."""
    images, labels, origins = [], [], []
    for name in files:
        if cap is not None and len(origins) >= cap:
            break
        x, y = read_batch(folder / name, spec.label_key, classes)
        images.append(x)
        labels.append(y)
        origins.extend(f"{spec.folder}/{name}#{i}" for i in range(len(x)))
    n = len(origins) if cap is None else min(cap, len(origins))
    return np.concatenate(images)[:n], np.concatenate(labels)[:n], origins[:n]


def _download(spec: CifarSpec):
    def fetch(scratch: Path) -> None:
        import torchvision.datasets

        getattr(torchvision.datasets, spec.downloader)(root=str(scratch), train=True, download=True)
    return fetch


def read_cifar(cfg: DataConfig, spec: CifarSpec) -> SourceData:
    """Read ``spec``'s dataset from ``cfg.source_dir`` (downloading into it when it is
    missing or empty). Images stay 3x32x32; the central code converts them."""
    root = cfg.source_dir
    loose = (*spec.train, spec.meta)
    if all((root / name).is_file() for name in loose):
        raise ByolError(f"data.source_dir {root} holds the {spec.what} files themselves; it should hold "
                        f"the folder {spec.folder}/ that contains them. Point data.source_dir at its parent folder.")
    how = (f"Unpack the official {spec.what} python-version archive into {root} (it makes {spec.folder}/), "
           "or leave the folder empty or missing to download it (needs a network).")
    ensure_local(root, spec.required, spec.what, _download(spec), how)
    folder = root / spec.folder
    classes = read_classes(folder / spec.meta, spec.names_key)
    images, labels, origins = {}, {}, {}
    for split, files in (("train", spec.train), ("test", spec.test)):
        images[split], labels[split], origins[split] = _read_split(folder, spec, files, cfg.caps[split], len(classes))
    return SourceData(images=images, labels=labels, origins=origins, classes=classes).check(folder)
