import gzip
import json

import numpy as np
import pandas as pd
import pytest

from byol_core.config import load_params
from byol_core.data.prepared import load_prepared
from byol_core.data.ingest import ingest
from byol_core.data.sources.fashion_mnist import FILES as FASHION_MNIST_FILES, read_idx
from byol_core.errors import ByolError
from conftest import make_fashion_files, write_idx, write_params


def _params(tmp_path, **overrides):
    return load_params(write_params(tmp_path, {"data.source_dir": str(tmp_path / "src"),
                                               "pretrain.batch_size": 8, **overrides}))


def test_idx_round_trip(tmp_path):
    array = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    write_idx(tmp_path / "x.gz", array)
    assert np.array_equal(read_idx(tmp_path / "x.gz"), array)


def test_ingest_writes_arrays_manifest_and_card(tmp_path):
    make_fashion_files(tmp_path / "src")
    params = _params(tmp_path, **{"data.max_train": 30})
    card = ingest(params.data, params.paths.prepared, params.paths.cache).card
    prepared = load_prepared(params.paths.prepared)
    assert prepared.images["train"].shape == (30, 1, 28, 28) and prepared.images["train"].dtype == np.uint8
    assert prepared.images["test"].shape == (12, 1, 28, 28)
    assert prepared.labels["train"].dtype == np.int64
    manifest = pd.read_parquet(params.paths.prepared / "manifest.parquet")
    assert list(manifest.columns) == ["index", "split", "label", "content_hash", "source", "duplicate", "status"]
    assert (manifest.split == "train").sum() == 30 and (manifest.split == "test").sum() == 12
    assert manifest.source.iloc[3] == "train-images-idx3-ubyte.gz#3"
    assert (manifest.status == "ok").all() and not manifest.duplicate.any()
    assert manifest.content_hash.str.len().eq(16).all()
    on_disk = json.loads((params.paths.prepared / "card.json").read_text())
    assert on_disk["classes"][9] == "Ankle boot" and on_disk["splits"] == {"train": 30, "test": 12}
    train = np.asarray(prepared.images["train"])
    assert on_disk["mean"][0] == pytest.approx(train.mean() / 255, rel=1e-9)
    assert on_disk["std"][0] == pytest.approx((train / 255).std(), rel=1e-9)
    assert on_disk["data_hash"] == card.data_hash
    # Same data, same hash; a changed cap, another hash.
    again = ingest(params.data, params.paths.prepared, params.paths.cache).card
    assert again.data_hash == card.data_hash
    other = _params(tmp_path, **{"data.max_train": 20})
    assert ingest(other.data, other.paths.prepared, other.paths.cache).card.data_hash != card.data_hash


def test_truncated_idx_is_refused_and_nothing_is_written(tmp_path):
    source = make_fashion_files(tmp_path / "src")
    path = source / FASHION_MNIST_FILES["train"][0]
    raw = gzip.decompress(path.read_bytes())
    with gzip.open(path, "wb") as handle:
        handle.write(raw[: len(raw) // 2])
    params = _params(tmp_path)
    with pytest.raises(ByolError, match="truncated or corrupt"):
        ingest(params.data, params.paths.prepared, params.paths.cache)
    assert not params.paths.prepared.exists()


def test_cut_gzip_stream_is_refused(tmp_path):
    source = make_fashion_files(tmp_path / "src")
    path = source / FASHION_MNIST_FILES["test"][0]
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ByolError, match=str(path.name)):
        read_idx(path)


def test_label_count_mismatch_is_refused(tmp_path):
    source = make_fashion_files(tmp_path / "src")
    write_idx(source / FASHION_MNIST_FILES["train"][1], np.zeros(39))
    params = _params(tmp_path)
    with pytest.raises(ByolError, match="40 images but 39 labels"):
        ingest(params.data, params.paths.prepared, params.paths.cache)


def test_missing_source_tries_the_downloader_then_says_how_to_get_the_files(tmp_path, monkeypatch):
    import torchvision.datasets

    class Offline:
        def __init__(self, *args, **kwargs):
            raise OSError("no network")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", Offline)
    params = _params(tmp_path)
    with pytest.raises(ByolError, match="data.source_dir .*src holds no Fashion-MNIST files and downloading "
                                        "them failed .*make setup"):
        ingest(params.data, params.paths.prepared, params.paths.cache)
    assert [p.name for p in tmp_path.iterdir()] == ["params.yaml"]  # no scratch folder left behind


def test_partial_source_dir_names_the_missing_files(tmp_path):
    source = make_fashion_files(tmp_path / "src")
    (source / FASHION_MNIST_FILES["train"][0]).unlink()
    params = _params(tmp_path)
    with pytest.raises(ByolError, match="lacks train-images-idx3-ubyte.gz"):
        ingest(params.data, params.paths.prepared, params.paths.cache)


def test_failed_ingest_keeps_the_previous_prepared_data(tmp_path):
    source = make_fashion_files(tmp_path / "src")
    params = _params(tmp_path)
    first = ingest(params.data, params.paths.prepared, params.paths.cache).card
    (source / FASHION_MNIST_FILES["test"][1]).write_bytes(b"garbage")
    with pytest.raises(ByolError):
        ingest(params.data, params.paths.prepared, params.paths.cache)
    assert load_prepared(params.paths.prepared).card.data_hash == first.data_hash
    leftovers = [p.name for p in params.paths.prepared.parent.iterdir() if p.name != "prepared"]
    assert leftovers == []


def test_load_prepared_without_ingest_says_what_to_do(tmp_path):
    with pytest.raises(ByolError, match="Run `byol ingest` first"):
        load_prepared(tmp_path / "nothing")


def test_ingest_never_replaces_a_folder_it_did_not_write(tmp_path):
    make_fashion_files(tmp_path / "src")
    params = _params(tmp_path, **{"paths.prepared": "mine"})
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "precious.txt").write_text("keep me")
    with pytest.raises(ByolError, match="refusing to replace .*mine: it exists but has no card.json"):
        ingest(params.data, params.paths.prepared, params.paths.cache)
    assert (tmp_path / "mine" / "precious.txt").read_text() == "keep me"


def test_exact_duplicates_are_counted_and_test_leaks_named(tmp_path):
    rng = np.random.default_rng(1)
    source = tmp_path / "src"
    source.mkdir()
    train = rng.integers(0, 256, (20, 28, 28))
    train[7] = train[2]  # a duplicate within train
    test = rng.integers(0, 256, (6, 28, 28))
    test[0] = train[5]  # a test image that is also in train
    test[1] = train[5]
    for split, images in (("train", train), ("test", test)):
        write_idx(source / FASHION_MNIST_FILES[split][0], images)
        write_idx(source / FASHION_MNIST_FILES[split][1], rng.integers(0, 10, len(images)))
    params = _params(tmp_path)
    card = ingest(params.data, params.paths.prepared, params.paths.cache).card
    manifest = pd.read_parquet(params.paths.prepared / "manifest.parquet")
    assert card.duplicates == 3 and card.test_in_train == 2
    assert manifest.index[manifest.duplicate].tolist() == [7, 20, 21]
    assert manifest.content_hash[7] == manifest.content_hash[2]


def test_channels_and_size_are_conformed(tmp_path):
    make_fashion_files(tmp_path / "src")
    params = _params(tmp_path, **{"data.channels": 3, "data.image_size": 16})
    card = ingest(params.data, params.paths.prepared, params.paths.cache).card
    prepared = load_prepared(params.paths.prepared)
    assert prepared.images["train"].shape == (40, 3, 16, 16) and card.channels == 3
    x = np.asarray(prepared.images["test"])
    assert np.array_equal(x[:, 0], x[:, 1]) and np.array_equal(x[:, 0], x[:, 2])  # grey repeated
    # Square 28 px -> 16 px is a pure antialiased resize: per-image means survive within rounding.
    raw = read_idx(tmp_path / "src" / FASHION_MNIST_FILES["test"][0]).astype(float)
    assert np.abs(x[:, 0].mean(axis=(1, 2)) - raw.mean(axis=(1, 2))).max() < 1.0


def test_upscaling_is_refused(tmp_path):
    make_fashion_files(tmp_path / "src")
    params = _params(tmp_path, **{"data.image_size": 32})
    with pytest.raises(ByolError, match="images are 28x28 px, smaller than data.image_size 32"):
        ingest(params.data, params.paths.prepared, params.paths.cache)
    assert not params.paths.prepared.exists()


def test_unlabeled_folder_adds_a_pretraining_split(tmp_path):
    from PIL import Image

    make_fashion_files(tmp_path / "src")
    extra = tmp_path / "src" / "unlabeled" / "batch1"
    extra.mkdir(parents=True)
    rng = np.random.default_rng(2)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(extra / f"{i}.png")
    params = _params(tmp_path, **{"data.max_unlabeled": 4})
    card = ingest(params.data, params.paths.prepared, params.paths.cache).card
    prepared = load_prepared(params.paths.prepared)
    assert card.splits == {"train": 40, "test": 12, "unlabeled": 4}
    assert prepared.images["unlabeled"].shape == (4, 1, 28, 28)  # the labelled split's shape
    assert (prepared.labels["unlabeled"] == -1).all()
    assert len(prepared.pretrain_images) == 44
    manifest = pd.read_parquet(params.paths.prepared / "manifest.parquet")
    kept = manifest.source[manifest.split == "unlabeled"].tolist()
    assert len(kept) == 4 and set(kept) < {f"unlabeled/batch1/{i}.png" for i in range(5)}
    only_test = load_prepared(params.paths.prepared, ("test",))
    assert set(only_test.images) == {"test"}
