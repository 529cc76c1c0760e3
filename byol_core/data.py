"""The prepared dataset: the one format every stage after ingest reads.

One directory, written atomically by :mod:`byol_core.ingest`:
  ``{split}_images.npy``  uint8, (N, C, H, W), for ``train``, ``test`` and, when the source
                          has one, ``unlabeled`` (pretraining only)
  ``{split}_labels.npy``  int64, (N,); -1 throughout ``unlabeled``
  ``manifest.parquet``    one row per image: index, split, label, content hash, source (the
                          image's place in the source), duplicate (an identical image came
                          earlier), status (``ok``, or ``skipped: <reason>`` for a file left
                          out under ``data.on_corrupt: skip``; those rows have index -1)
  ``card.json``           shape, class names, per-channel mean/std (train split, [0, 1] scale),
                          split sizes, duplicate and skip counts and a hash of all arrays
                          (``data_hash``)

This module knows nothing of the sources, so a change to a source reader reruns ingest
alone (and nothing after it, when the prepared data comes out the same).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from byol_core.errors import ByolError

LABELLED = ("train", "test")
SPLITS = ("train", "test", "unlabeled")
UNLABELED = -1  # the label of every image in the ``unlabeled`` split


@dataclass(frozen=True)
class Prepared:
    """The prepared dataset in memory: uint8 images (N, C, H, W) and int64 labels per split."""

    images: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    card: dict

    @property
    def pretrain_images(self) -> np.ndarray:
        """What BYOL trains on: the unlabeled split and the train split (labels unused), as
        solo-learn does for STL-10; just train when there is no unlabeled split."""
        if "unlabeled" not in self.images:
            return self.images["train"]
        return np.concatenate([self.images["unlabeled"], self.images["train"]])


def data_hash(images: dict[str, np.ndarray], labels: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for split in SPLITS:
        if split in images:
            for array in (images[split], labels[split]):
                digest.update(str(array.shape).encode())
                digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


def load_prepared(directory: Path, splits: tuple[str, ...] | None = None) -> Prepared:
    """Read what :func:`ingest` wrote (only ``splits``, when given); a missing piece is an
    error that says to run ingest."""
    directory = Path(directory)
    card_path = directory / "card.json"
    if not card_path.is_file():
        raise ByolError(f"no prepared dataset at {directory} (card.json missing). Run `byol ingest` first.")
    card = json.loads(card_path.read_text())
    images, labels = {}, {}
    for split in splits or card["splits"]:
        for kind, store in (("images", images), ("labels", labels)):
            path = directory / f"{split}_{kind}.npy"
            try:
                store[split] = np.load(path, allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise ByolError(f"{path}: cannot read ({exc}). Run `byol ingest` again.") from None
        if len(images[split]) != len(labels[split]):
            raise ByolError(f"{directory}: {split} images and labels differ in count. Run `byol ingest` again.")
    return Prepared(images=images, labels=labels, card=card)
