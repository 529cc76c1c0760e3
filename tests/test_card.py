"""The dataset card and the shard layout (byol_core.data.card): what is written reads back equal,
the bytes are those ingest wrote before they were typed (DVC hashes them), a damaged file is
refused with the message users already see, and an older card reads with defaults."""

import json
import re

import pytest

from byol_core.data.card import (CARD_DEFAULTS, CARD_FILE, FORMAT, LAYOUT_FILE, Card, Shard, SplitLayout, StoreLayout,
                            read_card, read_layout, read_store, write_card, write_layout)
from byol_core.config import load_params
from byol_core.errors import ByolError
from byol_core.data.ingest import ingest
from conftest import make_fashion_files, write_params

# Values of the kinds ingest writes: floats that need all 17 digits, a name JSON escapes.
MEAN, STD = [0.2860405969887955, 0.1], [0.35302424451492237, 0.3]
CLASSES = ["T-shirt/top", "Trouser", "Pullover \u00e9"]
SPLITS = {"train": 30, "test": 12, "unlabeled": 4}


def _card(**changes) -> Card:
    fields = dict(source="fashion_mnist", channels=2, height=28, width=28, classes=tuple(CLASSES), splits=dict(SPLITS),
                  mean=tuple(MEAN), std=tuple(STD), duplicates=3, test_in_train=2, skipped=1,
                  data_hash="0123456789abcdef")
    return Card(**{**fields, **changes})


def _layout() -> StoreLayout:
    return StoreLayout(FORMAT, (2, 28, 28), {
        "train": SplitLayout(30, (Shard("train-00000.npy", 20), Shard("train-00001.npy", 10))),
        "test": SplitLayout(12, (Shard("test-00000.npy", 12),))})


def _old_card_dict() -> dict:
    """The card as the untyped ingest built it (byol_core/data/ingest.py build_card before Card)."""
    return {
        "source": "fashion_mnist",
        "channels": 2,
        "height": 28,
        "width": 28,
        "classes": list(CLASSES),
        "splits": dict(SPLITS),
        "mean": list(MEAN),
        "std": list(STD),
        "duplicates": 3,
        "test_in_train": 2,
        "skipped": 1,
        "data_hash": "0123456789abcdef",
    }


def _old_layout_dict() -> dict:
    """The layout as the untyped ingest built it: ShardWriter.close() per split."""
    return {"format": 2, "image_shape": [2, 28, 28], "splits": {
        "train": {"count": 30, "shards": [{"file": "train-00000.npy", "count": 20},
                                          {"file": "train-00001.npy", "count": 10}]},
        "test": {"count": 12, "shards": [{"file": "test-00000.npy", "count": 12}]}}}


def test_card_and_layout_read_back_equal(tmp_path):
    write_card(tmp_path, _card())
    write_layout(tmp_path, _layout())
    assert read_card(tmp_path) == _card()
    assert read_layout(tmp_path) == _layout()
    assert read_store(tmp_path) == (_card(), _layout())


def test_the_files_are_byte_for_byte_what_the_untyped_ingest_wrote(tmp_path):
    write_card(tmp_path, _card())
    write_layout(tmp_path, _layout())
    assert (tmp_path / CARD_FILE).read_bytes() == (json.dumps(_old_card_dict(), indent=2) + "\n").encode()
    assert (tmp_path / LAYOUT_FILE).read_bytes() == (json.dumps(_old_layout_dict(), indent=1) + "\n").encode()


def test_a_real_ingest_writes_the_keys_in_the_old_order_and_format(tmp_path):
    make_fashion_files(tmp_path / "src", n_train=16, n_test=8)
    params = load_params(write_params(tmp_path, {"data.source_dir": str(tmp_path / "src")}))
    done = ingest(params.data, params.paths.prepared, params.paths.cache)
    text = (params.paths.prepared / CARD_FILE).read_text()
    on_disk = json.loads(text)
    assert list(on_disk) == list(_old_card_dict())
    assert text == json.dumps(on_disk, indent=2) + "\n"
    layout_text = (params.paths.prepared / LAYOUT_FILE).read_text()
    assert layout_text == json.dumps(json.loads(layout_text), indent=1) + "\n"
    assert list(json.loads(layout_text)) == ["format", "image_shape", "splits"]
    assert read_card(params.paths.prepared) == done.card and done.card.splits == {"train": 16, "test": 8}


def _damaged(path, problem: str) -> str:
    return "^" + re.escape(f"{path}: the dataset card is damaged ({problem}). Run `byol ingest` again.") + "$"


def _write_raw(folder, card: dict, layout: dict | None = None) -> None:
    (folder / CARD_FILE).write_text(json.dumps(card))
    (folder / LAYOUT_FILE).write_text(json.dumps(layout or _old_layout_dict()))


@pytest.mark.parametrize("change, problem", [
    ({"classes": None}, "its class names are not a list of names"),
    ({"classes": 3}, "its class names are not a list of names"),
    ({"channels": 3}, f"its image shape differs from {LAYOUT_FILE}'s [2, 28, 28]"),
    ({"height": "28"}, f"its image shape differs from {LAYOUT_FILE}'s [2, 28, 28]"),
    ({"mean": None}, "its channel mean and std are not finite numbers (std > 0), one per channel"),
    ({"mean": "0.5"}, "its channel mean and std are not finite numbers (std > 0), one per channel"),
    ({"std": [0.3, 0.0]}, "its channel mean and std are not finite numbers (std > 0), one per channel"),
    ({"data_hash": None}, "it has no data hash"),
    ({"data_hash": 12}, "it has no data hash"),
    ({"duplicates": "3"}, "its source, split sizes or duplicate and skip counts are not what ingest writes"),
    ({"splits": {"train": -1}}, "its source, split sizes or duplicate and skip counts are not what ingest writes"),
])
def test_a_card_missing_a_key_or_of_a_wrong_type_is_refused(tmp_path, change, problem):
    card = {**_old_card_dict(), **change}
    for key in [k for k, v in change.items() if v is None]:
        del card[key]  # None here stands for a missing key
    _write_raw(tmp_path, card)
    with pytest.raises(ByolError, match=_damaged(tmp_path / CARD_FILE, problem)):
        read_store(tmp_path)


def test_a_card_alone_is_checked_against_its_own_shape(tmp_path):
    (tmp_path / CARD_FILE).write_text(json.dumps({**_old_card_dict(), "mean": [0.5]}))
    with pytest.raises(ByolError, match=_damaged(tmp_path / CARD_FILE, "its channel mean and std are not finite "
                                                                       "numbers (std > 0), one per channel")):
        read_card(tmp_path)
    (tmp_path / CARD_FILE).write_text(json.dumps({**_old_card_dict(), "width": 0}))
    with pytest.raises(ByolError, match=_damaged(tmp_path / CARD_FILE, "its image shape is not three positive whole "
                                                                       "numbers")):
        read_card(tmp_path)


def test_missing_and_unreadable_files_keep_their_messages(tmp_path):
    with pytest.raises(ByolError, match="^" + re.escape(f"no prepared dataset at {tmp_path} (card.json missing). "
                                                        "Run `byol ingest` first.") + "$"):
        read_store(tmp_path)
    (tmp_path / CARD_FILE).write_text(json.dumps(_old_card_dict()))
    with pytest.raises(ByolError, match="^" + re.escape(f"{tmp_path}: store.json is missing. Run `byol ingest` "
                                                        "again.") + "$"):
        read_store(tmp_path)
    (tmp_path / LAYOUT_FILE).write_text("[1, 2]")
    with pytest.raises(ByolError, match=re.escape(f"{tmp_path / LAYOUT_FILE}: the shard layout is not a JSON object")):
        read_store(tmp_path)
    (tmp_path / LAYOUT_FILE).write_text(json.dumps({**_old_layout_dict(), "format": 1}))
    with pytest.raises(ByolError, match=re.escape(f"{tmp_path / LAYOUT_FILE}: prepared data of format 1, this "
                                                  "version reads format 2. Run `byol ingest` again.")):
        read_store(tmp_path)
    (tmp_path / LAYOUT_FILE).write_text(json.dumps({**_old_layout_dict(), "splits": {"train": {"count": 1}}}))
    with pytest.raises(ByolError, match=re.escape(f"{tmp_path / LAYOUT_FILE}: the shard layout is damaged ('shards'). "
                                                  "Run `byol ingest` again.")):
        read_store(tmp_path)
    (tmp_path / LAYOUT_FILE).write_text(json.dumps(_old_layout_dict()))
    (tmp_path / CARD_FILE).write_text('{"classes": ')
    with pytest.raises(ByolError, match=re.escape(f"{tmp_path / CARD_FILE}: cannot read the dataset card (")):
        read_store(tmp_path)


def test_a_folder_of_the_single_file_format_is_named_before_its_card_is_read(tmp_path):
    (tmp_path / CARD_FILE).write_text(json.dumps({"classes": ["a"], "splits": {"train": 1, "test": 1}}))
    (tmp_path / "train_images.npy").write_bytes(b"")
    with pytest.raises(ByolError, match="old single-file format.*Run `byol ingest` again"):
        read_store(tmp_path)


def test_an_older_card_without_the_optional_fields_reads_with_defaults(tmp_path):
    old = {k: v for k, v in _old_card_dict().items() if k not in CARD_DEFAULTS}
    assert set(old) == {"channels", "height", "width", "classes", "mean", "std", "data_hash"}
    _write_raw(tmp_path, old)
    card, _ = read_store(tmp_path)
    assert card == _card(source="", splits={}, duplicates=0, test_in_train=0, skipped=0)
    assert card.classes == tuple(CLASSES) and card.mean == tuple(MEAN)
