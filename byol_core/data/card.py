"""The prepared store's two JSON files, typed: the dataset card and the shard layout.

  ``card.json``   :class:`Card`: shape, class names, per-channel mean/std, split sizes,
                  duplicate and skip counts and the data hash
  ``store.json``  :class:`StoreLayout`: the format number, the image shape and each
                  split's shards

Ingest writes each through one function here, and every reader goes through one function
here, which refuses a missing or damaged file with a message that says to run ingest. The
JSON form is the one ingest has always written, so the same data gives the same bytes
(and the same DVC hash).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

from byol_core.errors import ByolError

CARD_FILE = "card.json"
LAYOUT_FILE = "store.json"
FORMAT = 2  # the layout's format number; another one is refused


@dataclass(frozen=True)
class Card:
    """The dataset card. Field order is the order of the keys in ``card.json``."""

    source: str  # the data.source the data came from
    channels: int
    height: int
    width: int
    classes: tuple[str, ...]
    splits: dict[str, int]  # images per split, in train, test, unlabeled order
    mean: tuple[float, ...]  # per channel, train split, [0, 1] scale
    std: tuple[float, ...]
    duplicates: int  # images whose pixels equal an earlier one's
    test_in_train: int  # test images whose pixels are also in train
    skipped: int  # files left out under data.on_corrupt: skip
    data_hash: str  # of every split's shape, labels and images (data.data_hash)

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.channels, self.height, self.width


# Read as these when an older card lacks them. Every other field is required.
CARD_DEFAULTS = {"source": "", "splits": {}, "duplicates": 0, "test_in_train": 0, "skipped": 0}


@dataclass(frozen=True)
class Shard:
    file: str  # a name inside the prepared folder
    count: int


@dataclass(frozen=True)
class SplitLayout:
    count: int
    shards: tuple[Shard, ...]


@dataclass(frozen=True)
class StoreLayout:
    """The shard layout. Field order is the order of the keys in ``store.json``."""

    format: int
    image_shape: tuple[int, int, int]
    splits: dict[str, SplitLayout]


def write_card(directory: Path, card: Card) -> None:
    (Path(directory) / CARD_FILE).write_text(json.dumps(dataclasses.asdict(card), indent=2) + "\n")


def write_layout(directory: Path, layout: StoreLayout) -> None:
    (Path(directory) / LAYOUT_FILE).write_text(json.dumps(dataclasses.asdict(layout), indent=1) + "\n")


def _read_json(path: Path, what: str) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ByolError(f"{path}: cannot read the {what} ({exc}). Run `byol ingest` again.") from None
    if not isinstance(value, dict):
        raise ByolError(f"{path}: the {what} is not a JSON object. Run `byol ingest` again.")
    return value


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _card_problem(raw: dict, image_shape: tuple[int, ...] | None) -> str | None:
    """What is wrong with a card's fields, or None: class names, the image shape (as in the
    layout, when given), a finite mean and positive std per channel, the data hash, and the
    optional fields' types."""
    classes, mean, std = raw["classes"], raw["mean"], raw["std"]
    shape = [raw["channels"], raw["height"], raw["width"]]
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        return "its class names are not a list of names"
    if image_shape is not None and shape != list(image_shape):
        return f"its image shape differs from {LAYOUT_FILE}'s {list(image_shape)}"
    if not all(_count(d) and d > 0 for d in shape):
        return "its image shape is not three positive whole numbers"
    if not all(isinstance(v, list) and len(v) == shape[0] and all(map(_number, v)) for v in (mean, std)) \
            or min(std) <= 0:
        return "its channel mean and std are not finite numbers (std > 0), one per channel"
    if not isinstance(raw["data_hash"], str):
        return "it has no data hash"
    splits = raw["splits"]
    if not isinstance(raw["source"], str) or not isinstance(splits, dict) \
            or not all(isinstance(k, str) and _count(n) for k, n in splits.items()) \
            or not all(_count(raw[k]) for k in ("duplicates", "test_in_train", "skipped")):
        return "its source, split sizes or duplicate and skip counts are not what ingest writes"
    return None


def _card_path(directory: Path) -> Path:
    path = Path(directory) / CARD_FILE
    if not path.is_file():
        raise ByolError(f"no prepared dataset at {directory} ({CARD_FILE} missing). Run `byol ingest` first.")
    return path


def read_card(directory: Path, image_shape: tuple[int, ...] | None = None) -> Card:
    """The card of the prepared folder ``directory``, validated (its image shape against
    ``image_shape``, the layout's, when given); an older card's missing optional fields
    read as :data:`CARD_DEFAULTS`."""
    path = _card_path(directory)
    raw = {**CARD_DEFAULTS, **_read_json(path, "dataset card")}
    raw = {field.name: raw.get(field.name) for field in dataclasses.fields(Card)}
    problem = _card_problem(raw, image_shape)
    if problem:
        raise ByolError(f"{path}: the dataset card is damaged ({problem}). Run `byol ingest` again.")
    return Card(**{**raw, "classes": tuple(raw["classes"]), "splits": dict(raw["splits"]),
                   "mean": tuple(float(v) for v in raw["mean"]), "std": tuple(float(v) for v in raw["std"])})


def read_layout(directory: Path) -> StoreLayout:
    """The shard layout of the prepared folder ``directory``, validated."""
    directory = Path(directory)
    path = directory / LAYOUT_FILE
    if not path.is_file():
        if (directory / "train_images.npy").exists():
            raise ByolError(f"{directory} holds prepared data in the old single-file format (train_images.npy); "
                            "this version reads sharded data. Run `byol ingest` again to rewrite it.")
        raise ByolError(f"{directory}: {LAYOUT_FILE} is missing. Run `byol ingest` again.")
    raw = _read_json(path, "shard layout")
    if raw.get("format") != FORMAT:
        raise ByolError(f"{path}: prepared data of format {raw.get('format')!r}, this version reads "
                        f"format {FORMAT}. Run `byol ingest` again.")
    try:
        image_shape = tuple(int(d) for d in raw["image_shape"])
        splits = {str(split): SplitLayout(int(entry["count"]),
                                          tuple(Shard(str(s["file"]), int(s["count"])) for s in entry["shards"]))
                  for split, entry in raw["splits"].items()}
        if len(image_shape) != 3 or min(image_shape) < 1:
            raise ValueError("bad image shape")
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise ByolError(f"{path}: the shard layout is damaged ({exc}). Run `byol ingest` again.") from None
    if any(Path(s.file).name != s.file for entry in splits.values() for s in entry.shards):
        raise ByolError(f"{path}: a shard name leaves the folder. Run `byol ingest` again.")
    return StoreLayout(FORMAT, image_shape, splits)


def read_store(directory: Path) -> tuple[Card, StoreLayout]:
    """The card and the layout of ``directory``, the card's image shape checked against the
    layout's. A folder without a card is no prepared data; one without a layout is of an
    older format (or cut): each is named before either file is read."""
    _card_path(directory)
    layout = read_layout(directory)
    return read_card(directory, layout.image_shape), layout
