"""The prepared dataset: the one format every stage after ingest reads (format 2).

One directory, written atomically by :mod:`byol_core.data.ingest`:
  ``{split}-{k:05d}.npy`` uint8 image shards (n_k, C, H, W) of bounded size
                          (:mod:`byol_core.data.store`), for ``train``, ``test`` and, when the
                          source has one, ``unlabeled`` (pretraining only)
  ``{split}-labels.npy``  int64, (N,); -1 throughout ``unlabeled``
  ``store.json``          the format number, the image shape and each split's shards
  ``manifest.parquet``    one row per image: index, split, label, content hash, source (the
                          image's place in the source), duplicate (an identical image came
                          earlier), status (``ok``, or ``skipped: <reason>`` for a file left
                          out under ``data.on_corrupt: skip``; those rows have index -1)
  ``card.json``           shape, class names, per-channel mean/std (train split, [0, 1] scale),
                          split sizes, duplicate and skip counts and a hash of all images and
                          labels (``data_hash``)

``store.json`` and ``card.json`` are read and written through :mod:`byol_core.data.card`.
Images are read a few rows at a time (``pread``, :mod:`byol_core.data.store`), so no stage needs a
whole split in memory. This module knows nothing of the sources, so a change to a source
reader reruns ingest alone (and nothing after it, when the prepared data comes out the same).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from byol_core.data.card import Card, read_store
from byol_core.errors import ByolError
from byol_core.data.store import ShardedImages

LABELLED = ("train", "test")
SPLITS = ("train", "test", "unlabeled")
UNLABELED = -1  # the label of every image in the ``unlabeled`` split


def labels_name(split: str) -> str:
    return f"{split}-labels.npy"


@dataclass(frozen=True)
class Prepared:
    """The prepared dataset: uint8 images (N, C, H, W), read from their shards as indexed, and
    int64 labels per split."""

    images: dict[str, ShardedImages]
    labels: dict[str, np.ndarray]
    card: Card

    @property
    def pretrain_images(self) -> ShardedImages:
        """What BYOL trains on: the unlabeled split and the train split (labels unused), as
        solo-learn does for STL-10; just train when there is no unlabeled split. A view:
        nothing is copied."""
        if "unlabeled" not in self.images:
            return self.images["train"]
        return self.images["unlabeled"] + self.images["train"]


def spread(n: int, k: int) -> np.ndarray:
    """``min(k, n)`` indices spread evenly over ``range(n)``: a fair sample of a split stored
    class by class (an image folder, in path order)."""
    k = min(k, n)
    return np.arange(k, dtype=np.int64) * n // max(k, 1)


def data_hash(splits: dict[str, tuple[tuple[int, ...], np.ndarray, bytes]]) -> str:
    """A hash of every split's shape, labels and images, from each image's content digest
    (so it costs a pass over the digests, not over the pixels). ``splits``: split ->
    (shape, labels, the images' digests joined in order)."""
    digest = hashlib.sha256()
    for split in SPLITS:
        if split in splits:
            shape, labels, digests = splits[split]
            digest.update(f"{split} {tuple(shape)}".encode())
            digest.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
            digest.update(hashlib.sha256(digests).digest())
    return digest.hexdigest()[:16]


def load_prepared(directory: Path, splits: tuple[str, ...] | None = None) -> Prepared:
    """Open what :func:`ingest` wrote (only ``splits``, when given): labels in memory, images
    read from the shards as indexed. A missing, old or damaged piece is an error that says to run ingest."""
    directory = Path(directory)
    card, layout = read_store(directory)
    images, labels = {}, {}
    for split in splits or tuple(layout.splits):
        if split not in layout.splits:
            raise ByolError(f"{directory} has no {split} split. Run `byol ingest` again.")
        shards = layout.splits[split].shards
        images[split] = ShardedImages([directory / s.file for s in shards], [s.count for s in shards],
                                      layout.image_shape)
        path = directory / labels_name(split)
        if not path.is_file():
            raise ByolError(f"{path}: missing or not a regular file. Run `byol ingest` again.")
        try:
            labels[split] = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ByolError(f"{path}: cannot read ({exc}). Run `byol ingest` again.") from None
        if labels[split].dtype != np.int64 or labels[split].ndim != 1 or len(images[split]) != len(labels[split]):
            raise ByolError(f"{directory}: {split} images and labels differ in count or type. Run `byol ingest` again.")
        classes = len(card.classes)
        valid = (labels[split] == UNLABELED) if split == "unlabeled" else \
            ((labels[split] >= 0) & (labels[split] < classes))
        if not valid.all():
            raise ByolError(f"{path}: labels outside the card's {classes} classes. Run `byol ingest` again.")
    return Prepared(images=images, labels=labels, card=card)
