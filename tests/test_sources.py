import io
import os
import pickle
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torchvision.datasets
from PIL import Image
from pydantic import ValidationError

from byol_core.data.prepared import load_prepared
from byol_core.errors import ByolError
from byol_core.data.ingest import ingest
from byol_core.schema.data import DataConfig
from byol_core.data.sources import SOURCES, cifar, cifar10, cifar100, fashion_mnist, imagefolder, reader, stl10
from conftest import make_fashion_files
from sourcefiles import image_of, make_cifar10, make_cifar100, make_imagefolder, make_stl10


def _cfg(source, directory, **overrides):
    values = dict(source=source, source_dir=directory, channels=None, image_size=None, test_fraction=0.5,
                  on_corrupt="fail", max_train=None, max_test=None, max_unlabeled=None, shard_mb=256)
    if source == "imagefolder":
        values["image_size"] = 32
    return DataConfig(**{**values, **overrides})


def _ingested(cfg, tmp_path):
    """An image folder through the real ingest (conversion cache and shards), read back:
    classes, skipped, and per split the origins, labels and images as stored (path order)."""
    out = tmp_path / ".out"
    done = ingest(cfg, out / "prepared", out / "cache")
    prepared = load_prepared(out / "prepared")
    manifest = pd.read_parquet(out / "prepared" / "manifest.parquet")
    kept = manifest[manifest.status == "ok"]
    return SimpleNamespace(
        classes=list(done.card.classes), skipped=done.skipped_files,
        origins={s: kept.source[kept.split == s].tolist() for s in prepared.images},
        labels=prepared.labels, images={s: np.asarray(x) for s, x in prepared.images.items()})


def _converted(paths, channels, size, workers=1):
    """convert_one's results for ``paths``, in order."""
    return list(imagefolder.results([str(p) for p in paths], channels, size, "train", workers))


def _assert_read(data, made, splits=("train", "test")):
    for split in splits:
        assert data.images[split].dtype == np.uint8 and data.labels[split].dtype == np.int64
        assert np.array_equal(data.images[split], made["images"][split])
        assert np.array_equal(data.labels[split], made["labels"][split])
    assert data.classes == made["classes"]


# --- the registry --------------------------------------------------------------------------

def test_validation_accepts_exactly_the_registered_sources_each_with_a_reader(tmp_path):
    for name in SOURCES:
        assert _cfg(name, tmp_path).source == name
        assert callable(reader(name).read)
    listed = ", ".join(repr(name) for name in list(SOURCES)[:-1]) + f" or {list(SOURCES)[-1]!r}"
    with pytest.raises(ValidationError, match=f"Input should be {listed}"):
        _cfg("mnist", tmp_path)


# --- Fashion-MNIST -------------------------------------------------------------------------

def test_fashion_mnist_caps_keep_the_first_images(tmp_path):
    make_fashion_files(tmp_path, n_train=5, n_test=4)
    full = fashion_mnist.read(_cfg("fashion-mnist", tmp_path))
    capped = fashion_mnist.read(_cfg("fashion-mnist", tmp_path, max_train=2, max_test=9))
    assert np.array_equal(capped.images["train"], full.images["train"][:2])
    assert capped.labels["train"].tolist() == full.labels["train"][:2].tolist()
    assert capped.origins["train"] == full.origins["train"][:2]
    assert len(capped.images["test"]) == len(capped.origins["test"]) == 4  # a cap above the split keeps it all


# --- CIFAR ---------------------------------------------------------------------------------

def test_cifar10_reads_batches_exactly(tmp_path):
    made = make_cifar10(tmp_path, per_batch=3, test=4)
    data = cifar10.read(_cfg("cifar10", tmp_path))
    _assert_read(data, made)
    assert data.images["train"].shape == (15, 3, 32, 32) and "unlabeled" not in data.images
    assert data.origins["train"][4] == "cifar-10-batches-py/data_batch_2#1"
    assert data.origins["test"] == [f"cifar-10-batches-py/test_batch#{i}" for i in range(4)]
    # Row-major 3072 values: the first 1024 are the red plane.
    raw = made["images"]["train"][0].reshape(-1)
    assert np.array_equal(data.images["train"][0, 0].reshape(-1), raw[:1024])


def test_cifar100_uses_fine_labels_and_str_keys(tmp_path):
    made = make_cifar100(tmp_path, train=5, test=3)
    data = cifar100.read(_cfg("cifar100", tmp_path))
    _assert_read(data, made)
    assert len(data.classes) == 100 and data.origins["train"][2] == "cifar-100-python/train#2"


def test_cifar_cap_reads_only_the_batches_it_needs(tmp_path):
    made = make_cifar10(tmp_path, per_batch=2, test=4)
    last = tmp_path / "cifar-10-batches-py" / "data_batch_5"
    last.write_bytes(last.read_bytes()[:50])  # damaged, but beyond the cap
    data = cifar10.read(_cfg("cifar10", tmp_path, max_train=3, max_test=2))
    assert np.array_equal(data.images["train"], made["images"]["train"][:3])
    assert np.array_equal(data.labels["test"], made["labels"]["test"][:2])
    with pytest.raises(ByolError, match="data_batch_5: not a readable CIFAR pickle.*fetch it again"):
        cifar10.read(_cfg("cifar10", tmp_path))


class _System:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _Open:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


@pytest.mark.parametrize("payload", [_System, _Open])
def test_malicious_cifar_pickle_is_refused_without_running(tmp_path, payload):
    make_cifar10(tmp_path / "src")
    proof, marker = tmp_path / "proof", tmp_path / "marker"
    pickle.loads(pickle.dumps(payload(proof)))  # the payload does run when unpickled plainly
    assert proof.exists()
    batch = tmp_path / "src" / "cifar-10-batches-py" / "data_batch_1"
    batch.write_bytes(pickle.dumps({"data": payload(marker), "labels": [0]}, protocol=2))
    with pytest.raises(ByolError, match=r"data_batch_1: refers to (posix\.system|io\.open), which a CIFAR "
                                        r"batch never does; refusing to load it \(a pickle can run code\)"):
        cifar10.read(_cfg("cifar10", tmp_path / "src"))
    assert not marker.exists()


def test_cifar_bad_files_name_the_file(tmp_path):
    make_cifar10(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    batch = folder / "data_batch_3"
    batch.write_bytes(pickle.dumps({"data": np.zeros((3, 3072), np.uint8), "labels": [1, 2]}))
    with pytest.raises(ByolError, match="data_batch_3: 3 images but 2 'labels'"):
        cifar10.read(_cfg("cifar10", tmp_path))
    batch.write_bytes(pickle.dumps({"data": np.zeros((2, 1000), np.uint8), "labels": [1, 2]}))
    with pytest.raises(ByolError, match=r"data_batch_3: 'data' should be uint8 rows of 3072"):
        cifar10.read(_cfg("cifar10", tmp_path))
    batch.write_bytes(pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [1, 10]}))
    with pytest.raises(ByolError, match=r"data_batch_3: 'labels' must be integers 0..9"):
        cifar10.read(_cfg("cifar10", tmp_path))


def test_cifar_batch_with_more_labels_than_its_size_allows_is_refused_before_they_are_built(tmp_path):
    """A list item costs one byte of pickle and eight of memory or more: 10^7 labels beside 3
    images (a 20 MB file) would unpickle into 80 MB of list before the count check. The
    entries are counted as the file streams, so it is refused holding almost nothing;
    a batch whose labels match its images passes."""
    import tracemalloc

    from sourcefiles import cifar_batch_with_labels

    fine = cifar_batch_with_labels(tmp_path / "fine", 2000, 2000)
    x, y = cifar.read_batch(fine, "labels", 10)
    assert x.shape == (2000, 3, 32, 32) and y.shape == (2000,)
    batch = cifar_batch_with_labels(tmp_path / "data_batch_1", 10_000_000)
    size = batch.stat().st_size
    tracemalloc.start()
    with pytest.raises(ByolError, match=rf"data_batch_1: holds more than {16 * (size // 3072) + 10_000} pickle entries, "
                                        rf"more than a CIFAR file of {size} bytes \(room for {size // 3072} images\) needs; "
                                        r"refusing to load it .*fetch the official files"):
        cifar.read_batch(batch, "labels", 10)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 2 << 20, peak  # the list alone would be 80 MB


def test_cifar_folder_layout_errors(tmp_path):
    make_cifar10(tmp_path / "root")
    with pytest.raises(ByolError, match="Point data.source_dir at its parent folder"):
        cifar10.read(_cfg("cifar10", tmp_path / "root" / "cifar-10-batches-py"))
    (tmp_path / "root" / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(ByolError, match="lacks cifar-10-batches-py/test_batch for CIFAR-10"):
        cifar10.read(_cfg("cifar10", tmp_path / "root"))


def test_cifar_and_stl_download_into_an_empty_folder(tmp_path, monkeypatch):
    made = {}

    def fake_cifar(root, train, download):
        assert download
        made["cifar"] = make_cifar100(root)

    def fake_stl(root, split, download):
        made["stl"] = make_stl10(root)

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", fake_cifar)
    monkeypatch.setattr(torchvision.datasets, "STL10", fake_stl)
    _assert_read(cifar100.read(_cfg("cifar100", tmp_path / "c100")), made["cifar"])
    _assert_read(stl10.read(_cfg("stl10", tmp_path / "stl")), made["stl"], ("train", "test", "unlabeled"))
    assert sorted(p.name for p in (tmp_path / "c100").iterdir()) == ["cifar-100-python"]


# --- STL-10 --------------------------------------------------------------------------------

def test_stl10_reads_all_three_splits_column_major(tmp_path):
    made = make_stl10(tmp_path, train=3, test=2, unlabeled=4)
    data = stl10.read(_cfg("stl10", tmp_path))
    _assert_read(data, made, ("train", "test", "unlabeled"))
    assert data.images["unlabeled"].shape == (4, 3, 96, 96)
    assert (data.labels["unlabeled"] == -1).all()
    assert data.origins["unlabeled"][3] == "stl10_binary/unlabeled_X.bin#3"
    # Independent of the helper: byte 96 of the file is row 0 of column 1 of the red plane.
    raw = (tmp_path / "stl10_binary" / "train_X.bin").read_bytes()
    assert data.images["train"][0, 0, 0, 1] == raw[96] and data.images["train"][0, 0, 1, 0] == raw[1]
    labels = (tmp_path / "stl10_binary" / "train_y.bin").read_bytes()
    assert data.labels["train"].tolist() == [b - 1 for b in labels]


def test_stl10_caps_read_only_the_first_images(tmp_path):
    made = make_stl10(tmp_path, train=3, test=2, unlabeled=5)
    data = stl10.read(_cfg("stl10", tmp_path, max_train=2, max_test=1, max_unlabeled=2))
    assert np.array_equal(data.images["unlabeled"], made["images"]["unlabeled"][:2])
    assert np.array_equal(data.images["train"], made["images"]["train"][:2])
    assert data.labels["test"].tolist() == made["labels"]["test"][:1].tolist()
    assert len(data.origins["unlabeled"]) == 2


def test_stl10_bad_files(tmp_path):
    make_stl10(tmp_path)
    folder = tmp_path / "stl10_binary"
    with pytest.raises(ByolError, match="Point data.source_dir at its parent folder"):
        stl10.read(_cfg("stl10", folder))
    images = folder / "unlabeled_X.bin"
    images.write_bytes(images.read_bytes()[:-5])
    with pytest.raises(ByolError, match=r"unlabeled_X.bin: \d+ bytes is not a whole number.*truncated"):
        stl10.read(_cfg("stl10", tmp_path))
    make_stl10(tmp_path)
    (folder / "train_y.bin").write_bytes(bytes([1, 2]))
    with pytest.raises(ByolError, match="train_y.bin: 2 labels for the 3 images in train_X.bin"):
        stl10.read(_cfg("stl10", tmp_path))
    (folder / "train_y.bin").write_bytes(bytes([1, 11, 3]))
    with pytest.raises(ByolError, match=r"train_y.bin: label 11 at index 1 is outside 1..10"):
        stl10.read(_cfg("stl10", tmp_path))


# --- image folder --------------------------------------------------------------------------

def test_imagefolder_class_folders_convert_every_mode(tmp_path):
    written = make_imagefolder(tmp_path, per_class=6)
    (tmp_path / "cat" / ".DS_Store").write_bytes(b"junk")
    (tmp_path / "dog" / ".hidden").mkdir()
    (tmp_path / "dog" / ".hidden" / "x.txt").write_text("junk")
    make_imagefolder(tmp_path, classes=("unlabeled",), per_class=2)  # reserved, never a class
    for channels in (None, 1):
        planned = imagefolder.read(_cfg("imagefolder", tmp_path, channels=channels, image_size=24))
        for split in ("train", "test"):  # planned in hash order, mixed across classes (a cap is a fair sample)
            shares = [imagefolder.split_share(o) for o in planned.origins[split]]
            assert shares == sorted(shares)
        data = _ingested(_cfg("imagefolder", tmp_path, channels=channels, image_size=24), tmp_path)
        c = channels or 3
        assert data.classes == ["cat", "dog"] and data.skipped == []
        assert data.images["train"].shape[1:] == (c, 24, 24) and data.images["test"].shape[1:] == (c, 24, 24)
        origins = data.origins["train"] + data.origins["test"]
        assert sorted(origins) == sorted(written) and len(origins) == 12
        for split in ("train", "test"):
            assert data.origins[split] == sorted(data.origins[split])  # stored in path order
            assert data.labels[split].tolist() == [int(o.startswith("dog/")) for o in data.origins[split]]
            for image in data.images[split]:  # random content: nothing collapsed to one colour
                assert image.std() > 10


def _save(path, image, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kw)
    return path


def test_imagefolder_pixels_16_bit_alpha_and_palette(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    k = rng.integers(0, 256, (32, 32))
    alpha = np.zeros((32, 32, 4), np.uint8)
    alpha[:16] = [10, 20, 30, 255]  # opaque top half, transparent bottom half
    palette = Image.fromarray(np.repeat([[0], [1]], 16, axis=0).repeat(32, axis=1).astype(np.uint8), "P")
    palette.putpalette([0, 0, 0, 200, 100, 50])
    files = [_save(tmp_path / "a" / "rgb.png", Image.fromarray(rgb)),
             _save(tmp_path / "a" / "grey16.png", Image.fromarray((k * 257).astype(np.uint16))),
             _save(tmp_path / "a" / "rgba.png", Image.fromarray(alpha, "RGBA")),
             _save(tmp_path / "a" / "p.png", palette, transparency=0)]
    assert Image.open(files[1]).mode in ("I;16", "I")
    x = np.stack([pixels for pixels, _, _ in _converted(files, 3, 32)])
    assert np.array_equal(x[0], rgb.transpose(2, 0, 1))  # same size: untouched
    assert np.array_equal(x[1, 0], k) and np.array_equal(x[1, 1], k)  # 257*k -> k, not clipped
    assert x[2, :, 0, 0].tolist() == [10, 20, 30] and (x[2, :, 20:] == 255).all()  # alpha over white
    assert (x[3, :, :16] == 255).all() and x[3, :, 20, 0].tolist() == [200, 100, 50]


def test_imagefolder_16_and_32_bit_grey_scale_in_bands_without_widening_whole(tmp_path, monkeypatch):
    """Wide grey maps 0..65535 onto 0..255 with rounding (32-bit values beyond it stretch the
    range), the same whether scaled in one band or many; and only a band at a time is
    widened to int64, so the conversion holds about a byte a pixel beyond the decoded image."""
    import tracemalloc

    rng = np.random.default_rng(2)
    v16 = rng.integers(0, 65536, (40, 48)).astype(np.uint16)
    v16[0, :4] = [0, 128, 129, 65535]  # 128 * 255 / 65535 = 0.498 -> 0; 129 -> 0.502 -> 1
    v32 = rng.integers(-1000, 100_000, (40, 48)).astype(np.int32)
    files = [_save(tmp_path / "a" / "grey16.png", Image.fromarray(v16)),
             _save(tmp_path / "a" / "grey32.tif", Image.fromarray(v32, "I"))]
    assert [Image.open(f).mode for f in files] == ["I;16", "I"]
    expect16 = (v16.astype(np.int64) * 255 + 32767) // 65535
    lo, hi = int(v32.min()), max(65535, int(v32.max()))
    expect32 = ((v32.astype(np.int64) - lo) * 255 + (hi - lo) // 2) // (hi - lo)
    assert expect16[0, :4].tolist() == [0, 0, 1, 255]
    for band in (1 << 20, 48 * 7, 1):  # one band; bands of 7 rows (the last one short); one row each
        monkeypatch.setattr(imagefolder, "WIDE_BAND_PIXELS", band)
        x = [pixels for pixels, _, _ in _converted(files, 1, 40)]
        assert np.array_equal(x[0][0], expect16[:, 4:44]) and np.array_equal(x[1][0], expect32[:, 4:44]), band
    monkeypatch.setattr(imagefolder, "WIDE_BAND_PIXELS", 1 << 14)
    with Image.open(_save(tmp_path / "big.png", Image.fromarray(np.full((1024, 1024), 40000, np.uint16)))) as big:
        big.load()
        tracemalloc.start()
        grey = imagefolder._wide_grey(big)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert grey.mode == "L" and np.asarray(grey)[0, 0] == 156
    assert peak < 2 * 1024 * 1024, peak  # the result, a byte a pixel, and one band; int64 whole: 8 a pixel


def test_imagefolder_oversized_16_bit_image_is_refused_by_its_header_like_an_8_bit_one(tmp_path):
    """The pixel bound (PIL's decompression-bomb limit, checked when the header is read)
    applies to 16-bit images as to 8-bit ones: the same message, before any pixel is decoded
    (the files hold 4x4 pixels of data, so decoding them would fail otherwise)."""
    from sourcefiles import png_claiming

    limit = 2 * Image.MAX_IMAGE_PIXELS
    side = int(limit**0.5) + 1
    results = [_converted([png_claiming(tmp_path / f"{mode[:3]}.png", side, side, mode)], 1, 32)[0]
               for mode in ("I;16", "L", "RGB")]
    assert all(pixels is None and kind == "read" for pixels, kind, _ in results)
    assert {problem for _, _, problem in results} == {
        f"cannot be read as an image (Image size ({side * side} pixels) exceeds limit of {limit} pixels, could be "
        "decompression bomb DOS attack.)"}
    pixels, kind, problem = _converted([png_claiming(tmp_path / "small16.png", 64, 64, "I;16")], 1, 32)[0]
    assert kind == "read" and "truncated" in problem  # within the bound it is decoded (and these bytes fail)


def test_imagefolder_resize_crop_and_exif(tmp_path):
    half = np.zeros((20, 40), np.uint8)
    half[:, 20:] = 255  # left half black, right half white
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: shown turned 90 degrees clockwise
    plain = _save(tmp_path / "a" / "plain.png", Image.fromarray(half))
    turned = _save(tmp_path / "a" / "turned.png", Image.fromarray(half), exif=exif)
    x = np.stack([pixels for pixels, _, _ in _converted([plain, turned], 1, 10)])
    assert x.shape == (2, 1, 10, 10)
    assert (x[0, 0, :, :3] < 30).all() and (x[0, 0, :, -3:] > 225).all()  # split left/right
    assert (x[1, 0, :3] < 30).all() and (x[1, 0, -3:] > 225).all()  # split top/bottom


def test_imagefolder_split_folders_and_val(tmp_path):
    make_imagefolder(tmp_path, classes=("a", "b", "c"), per_class=2, prefix="train/")
    make_imagefolder(tmp_path, classes=("b", "c"), per_class=1, prefix="val/", seed=1)
    data = imagefolder.read(_cfg("imagefolder", tmp_path))
    assert data.classes == ["a", "b", "c"]
    assert data.origins["test"] == ["val/b/000.png", "val/c/000.png"] and data.labels["test"].tolist() == [1, 2]
    assert len(data.origins["train"]) == 6 and sorted(data.labels["train"].tolist()) == [0, 0, 1, 1, 2, 2]
    assert data.labels["train"].tolist() == ["abc".index(o.split("/")[1]) for o in data.origins["train"]]
    make_imagefolder(tmp_path, classes=("z",), per_class=1, prefix="val/")
    with pytest.raises(ByolError, match=r"val: class folder\(s\) z have no match in .*train"):
        imagefolder.read(_cfg("imagefolder", tmp_path))


def test_imagefolder_hash_split_is_stable_when_files_are_added(tmp_path):
    make_imagefolder(tmp_path, per_class=8)
    before = imagefolder.read(_cfg("imagefolder", tmp_path, test_fraction=0.3))
    assert before.origins["train"] and before.origins["test"]
    make_imagefolder(tmp_path, per_class=8, start=8, seed=5)
    after = imagefolder.read(_cfg("imagefolder", tmp_path, test_fraction=0.3))
    for split in ("train", "test"):
        assert set(before.origins[split]) < set(after.origins[split])
    share = [imagefolder.split_share(o) for o in after.origins["test"]]
    assert max(share) < 0.3 <= min(imagefolder.split_share(o) for o in after.origins["train"])
    assert 2 <= len(share) <= 10  # about 30% of 32


def test_imagefolder_caps_convert_only_the_first_files(tmp_path):
    make_imagefolder(tmp_path, per_class=6)
    plan = imagefolder.read(_cfg("imagefolder", tmp_path)).origins  # sample (hash) order
    full = _ingested(_cfg("imagefolder", tmp_path), tmp_path)
    last = tmp_path / plan["train"][-1]
    last.write_bytes(b"corrupt, but beyond the cap")
    capped = _ingested(_cfg("imagefolder", tmp_path, max_train=2, max_test=1), tmp_path)
    assert capped.origins["train"] == sorted(plan["train"][:2]) and capped.origins["test"] == plan["test"][:1]
    kept = [full.origins["train"].index(o) for o in capped.origins["train"]]
    assert np.array_equal(capped.images["train"], full.images["train"][kept])
    mixed = _ingested(_cfg("imagefolder", tmp_path, max_train=4), tmp_path)
    assert set(mixed.labels["train"].tolist()) == {0, 1}  # a cap samples every class, not the first
    (tmp_path / plan["train"][0]).write_bytes(b"corrupt, within the cap")
    skipping = _ingested(_cfg("imagefolder", tmp_path, max_train=2, on_corrupt="skip"), tmp_path)
    assert skipping.origins["train"] == sorted(plan["train"][1:3])  # the next file fills in
    assert [s["origin"] for s in skipping.skipped] == [plan["train"][0]]


BAD_FILES = [
    ("bad.png", lambda p: p.write_bytes(b"not a png at all"),
     r"bad.png: cannot be read as an image \(.+\)\. Remove or replace it, or set data.on_corrupt: skip to leave it out\.",
     "cannot be read as an image ("),
    ("cut.png", lambda p: p.write_bytes(_png_bytes()[:300]),
     r"cut.png: cannot be read as an image \(.+\)\. Remove or replace it", "cannot be read as an image ("),
    ("tiny.png", lambda p: Image.new("RGB", (12, 40)).save(p),
     r"tiny.png: 12x40 px is smaller than data.image_size 32 \(images are never upscaled\)\. Remove it, lower "
     r"data.image_size, or set data.on_corrupt: skip\.", "12x40 px is smaller than data.image_size 32"),
    ("notes.txt", lambda p: p.write_text("hello"),
     r"notes.txt: unsupported file type '\.txt' \(not an image format PIL reads\)\. Convert or remove it, or set "
     r"data.on_corrupt: skip\.", "unsupported file type '.txt'"),
]


def _png_bytes():
    buffer = io.BytesIO()
    image_of("RGB", 64, 64, np.random.default_rng(0)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("name, make, message, reason", BAD_FILES)
def test_imagefolder_file_problems_fail_or_skip(tmp_path, name, make, message, reason):
    make_imagefolder(tmp_path, per_class=6)
    make(tmp_path / "cat" / name)
    with pytest.raises(ByolError, match=message):
        _ingested(_cfg("imagefolder", tmp_path), tmp_path)
    data = _ingested(_cfg("imagefolder", tmp_path, on_corrupt="skip"), tmp_path)
    assert [(s["origin"], s["split"] in ("train", "test")) for s in data.skipped] == [(f"cat/{name}", True)]
    assert data.skipped[0]["reason"].startswith(reason)
    assert len(data.origins["train"]) + len(data.origins["test"]) == 12


@pytest.mark.parametrize("build, message", [
    (lambda d: None, r"does not exist\. Point it at a folder of class folders"),
    (lambda d: d.mkdir(), "holds no class folders"),
    (lambda d: make_imagefolder(d, classes=("unlabeled",), per_class=1), "holds no class folders"),
    (lambda d: (make_imagefolder(d, per_class=2), (d / "empty").mkdir(), (d / "empty" / "a.txt").write_text("x")),
     r"class folder 'empty' holds no images\. Add images or remove the folder\."),
    (lambda d: make_imagefolder(d, per_class=2, prefix="train/"), r"train looks like a split folder.*no test/"),
    (lambda d: [make_imagefolder(d, per_class=1, prefix=p) for p in ("train/", "test/", "val/")], "both test/ and val/"),
    (lambda d: make_imagefolder(d, classes=("a",), per_class=1), r"none of its 1 files fell in the (test|train) split"),
])
def test_imagefolder_structural_errors(tmp_path, build, message):
    build(tmp_path / "src")
    with pytest.raises(ByolError, match=message):
        imagefolder.read(_cfg("imagefolder", tmp_path / "src", on_corrupt="skip"))


def test_imagefolder_follows_symlinked_class_folders_and_subfolders(tmp_path, capsys):
    """Class folders linked from another disk are read like folders, under the link's name;
    so are linked subfolders, and linked split folders. DVC does not look inside them, and
    ingest says so."""
    src, disk = tmp_path / "src", tmp_path / "other-disk"
    make_imagefolder(src, classes=("cat",), per_class=6)
    theirs = make_imagefolder(disk, classes=("dog", "extra"), per_class=6)
    (src / "dog").symlink_to(disk / "dog")
    (src / "cat" / "more").symlink_to(disk / "extra", target_is_directory=True)
    data = _ingested(_cfg("imagefolder", src), tmp_path)
    origins = sorted(data.origins["train"] + data.origins["test"])
    expected = [o for o in make_imagefolder(tmp_path / "copy", classes=("cat",), per_class=6)]
    expected += [o for o in theirs if o.startswith("dog/")] + ["cat/more/" + o[6:] for o in theirs if o.startswith("extra/")]
    assert data.classes == ["cat", "dog"] and origins == sorted(expected) and len(origins) == 18
    for split in ("train", "test"):
        assert data.labels[split].tolist() == [int(o.startswith("dog/")) for o in data.origins[split]]
    assert "ingest: read through symlinks: cat/more, dog. DVC does not look inside symlinked folders, so `dvc repro` " \
           "will not rerun ingest when files there change: run `dvc repro --force ingest`" in capsys.readouterr().err
    split_src = tmp_path / "split"
    make_imagefolder(disk / "t", per_class=2, prefix="train/")
    make_imagefolder(split_src, per_class=1, prefix="test/")
    (split_src / "train").symlink_to(disk / "t" / "train")
    assert len(imagefolder.read(_cfg("imagefolder", split_src)).origins["train"]) == 4


@pytest.mark.parametrize("link, target, message", [
    ("cat/sub/loop", "..", r"src/cat/sub/loop: a symlink back to .*src/cat, a folder that contains it, so reading the "
                           r"folder would never end\. Remove the link"),
    ("cat/root", "..", r"src/cat/root: a symlink back to .*src, a folder that contains it"),
    ("cat/dogs", "../dog", r"src/(cat/dogs and .*src/dog|dog and .*src/cat/dogs)( \(.*\))? are the same folder, reached "
                           r"twice through a symlink, so its images would be read twice\. Remove the link, or copy"),
    ("bird", "../src/cat", r"src/(bird and .*src/cat|cat and .*src/bird)( \(.*\))? are the same folder"),
    ("fish", "../unmounted/fish", r"src/fish: a symlink to \.\./unmounted/fish, which does not exist \(a disk not "
                                  r"mounted\?\)\. Fix or remove the link"),
])
def test_imagefolder_refuses_symlink_loops_folders_read_twice_and_dangling_classes(tmp_path, link, target, message):
    make_imagefolder(tmp_path / "src", per_class=6)
    (tmp_path / "src" / link).symlink_to(target)
    with pytest.raises(ByolError, match=message):
        imagefolder.read(_cfg("imagefolder", tmp_path / "src"))


def test_imagefolder_split_empty_after_skipping(tmp_path):
    make_imagefolder(tmp_path, per_class=2, prefix="train/")
    (tmp_path / "test" / "cat").mkdir(parents=True)
    (tmp_path / "test" / "cat" / "broken.png").write_bytes(b"broken")
    with pytest.raises(ByolError, match=r"the test split holds no usable images: all 1 were left out.*broken.png"):
        _ingested(_cfg("imagefolder", tmp_path, on_corrupt="skip"), tmp_path)


def test_parallel_conversion_matches_serial(tmp_path):
    rng = np.random.default_rng(3)
    for i in range(70):
        mode = ("RGB", "L", "RGBA", "P")[i % 4]
        suffix = ".jpg" if mode == "L" else ".png"
        _save(tmp_path / f"c{i % 3}" / f"{i:03d}{suffix}", image_of(mode, 10 + i % 7, 12, rng))
    (tmp_path / "c2" / "050.png").write_bytes(b"broken")  # replaces an image
    files = [tmp_path / rel for rel, _, _ in imagefolder.list_images(tmp_path, tmp_path)]
    assert len(files) == 70 and len(files) >= imagefolder.PARALLEL_FROM
    serial, parallel = _converted(files, 3, 8, workers=1), _converted(files, 3, 8, workers=2)
    assert [kind for _, kind, _ in serial] == [kind for _, kind, _ in parallel] == ["read" if f.name == "050.png" else ""
                                                                                  for f in files]
    assert all(a is None and b is None or np.array_equal(a, b) for (a, _, _), (b, _, _) in zip(serial, parallel))
    assert sum(pixels is not None for pixels, _, _ in parallel) == 69


def test_sample_order_is_by_share_then_by_path_for_equal_shares():
    rng = np.random.default_rng(4)
    files = [(f"c{rng.integers(5)}/{rng.integers(10**6):07d}-{k}.png", 1, 1) for k in range(3000)]
    shares = rng.choice(np.array([0.1, 0.25, 0.5]), size=len(files)).astype(np.float64)  # many ties
    shares[::3] = rng.random(len(shares[::3]))
    want = [files[j] for j in sorted(range(len(files)), key=lambda j: (shares[j], files[j][0]))]
    assert imagefolder.sample_order(files, shares) == want
    hashed = imagefolder.sample_order(files)  # shares from the paths themselves
    assert hashed == sorted(files, key=lambda f: (imagefolder.split_share(f[0]), f[0]))
