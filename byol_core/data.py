"""The prepared dataset: the one format every stage after ingest reads (format 2).

One directory, written atomically by :mod:`byol_core.ingest`:
  ``{split}-{k:05d}.npy`` uint8 image shards (n_k, C, H, W) of bounded size
                          (:mod:`byol_core.store`), for ``train``, ``test`` and, when the
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

Images are read memory-mapped, so no stage needs a whole split in memory. This module
knows nothing of the sources, so a change to a source reader reruns ingest alone (and
nothing after it, when the prepared data comes out the same).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from byol_core.errors import ByolError
from byol_core.store import ShardedImages

LABELLED = ("train", "test")
SPLITS = ("train", "test", "unlabeled")
UNLABELED = -1  # the label of every image in the ``unlabeled`` split
FORMAT = 2
LAYOUT_FILE = "store.json"


def labels_name(split: str) -> str:
    return f"{split}-labels.npy"


@dataclass(frozen=True)
class Prepared:
    """The prepared dataset: memory-mapped uint8 images (N, C, H, W) and int64 labels per split."""

    images: dict[str, ShardedImages]
    labels: dict[str, np.ndarray]
    card: dict

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


def _read_json(path: Path, what: str) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ByolError(f"{path}: cannot read the {what} ({exc}). Run `byol ingest` again.") from None
    if not isinstance(value, dict):
        raise ByolError(f"{path}: the {what} is not a JSON object. Run `byol ingest` again.")
    return value


def _check_card(card: dict, image_shape: tuple[int, ...], path: Path) -> None:
    """The card fields later stages use: class names, the image shape (as in the layout),
    and a finite mean and positive std per channel."""
    def number(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    classes, mean, std = card.get("classes"), card.get("mean"), card.get("std")
    problem = None
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        problem = "its class names are not a list of names"
    elif [card.get("channels"), card.get("height"), card.get("width")] != list(image_shape):
        problem = f"its image shape differs from {LAYOUT_FILE}'s {list(image_shape)}"
    elif not all(isinstance(v, list) and len(v) == image_shape[0] and all(map(number, v)) for v in (mean, std)) \
            or min(std) <= 0:
        problem = "its channel mean and std are not finite numbers (std > 0), one per channel"
    elif not isinstance(card.get("data_hash"), str):
        problem = "it has no data hash"
    if problem:
        raise ByolError(f"{path}: the dataset card is damaged ({problem}). Run `byol ingest` again.")


def load_prepared(directory: Path, splits: tuple[str, ...] | None = None) -> Prepared:
    """Open what :func:`ingest` wrote (only ``splits``, when given): labels in memory, images
    memory-mapped. A missing, old or damaged piece is an error that says to run ingest."""
    directory = Path(directory)
    card_path, layout_path = directory / "card.json", directory / LAYOUT_FILE
    if not card_path.is_file():
        raise ByolError(f"no prepared dataset at {directory} (card.json missing). Run `byol ingest` first.")
    if not layout_path.is_file():
        if (directory / "train_images.npy").exists():
            raise ByolError(f"{directory} holds prepared data in the old single-file format (train_images.npy); "
                            "this version reads sharded data. Run `byol ingest` again to rewrite it.")
        raise ByolError(f"{directory}: {LAYOUT_FILE} is missing. Run `byol ingest` again.")
    card, layout = _read_json(card_path, "dataset card"), _read_json(layout_path, "shard layout")
    if layout.get("format") != FORMAT:
        raise ByolError(f"{layout_path}: prepared data of format {layout.get('format')!r}, this version reads "
                        f"format {FORMAT}. Run `byol ingest` again.")
    try:
        image_shape = tuple(int(d) for d in layout["image_shape"])
        entries = {split: [(str(s["file"]), int(s["count"])) for s in layout["splits"][split]["shards"]]
                   for split in layout["splits"]}
        if len(image_shape) != 3 or min(image_shape) < 1:
            raise ValueError("bad image shape")
    except (KeyError, TypeError, ValueError) as exc:
        raise ByolError(f"{layout_path}: the shard layout is damaged ({exc}). Run `byol ingest` again.") from None
    _check_card(card, image_shape, card_path)
    images, labels = {}, {}
    for split in splits or tuple(entries):
        if split not in entries:
            raise ByolError(f"{directory} has no {split} split. Run `byol ingest` again.")
        files = [directory / name for name, _ in entries[split]]
        if any(Path(name).name != name for name, _ in entries[split]):
            raise ByolError(f"{layout_path}: a shard name leaves the folder. Run `byol ingest` again.")
        images[split] = ShardedImages(files, [count for _, count in entries[split]], image_shape)
        path = directory / labels_name(split)
        if not path.is_file():
            raise ByolError(f"{path}: missing or not a regular file. Run `byol ingest` again.")
        try:
            labels[split] = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ByolError(f"{path}: cannot read ({exc}). Run `byol ingest` again.") from None
        if labels[split].dtype != np.int64 or labels[split].ndim != 1 or len(images[split]) != len(labels[split]):
            raise ByolError(f"{directory}: {split} images and labels differ in count or type. Run `byol ingest` again.")
        classes = len(card["classes"])
        valid = (labels[split] == UNLABELED) if split == "unlabeled" else \
            ((labels[split] >= 0) & (labels[split] < classes))
        if not valid.all():
            raise ByolError(f"{path}: labels outside the card's {classes} classes. Run `byol ingest` again.")
    return Prepared(images=images, labels=labels, card=card)
