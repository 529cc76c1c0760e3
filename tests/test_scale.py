"""Data bigger than memory: the sharded store, incremental ingest and streamed pretraining.

- shards are bounded, read back exactly, and their content-defined boundaries keep every
  shard away from an insertion byte for byte (what DVC then does not push again);
- a re-ingest converts only new files and writes exactly what a from-scratch ingest writes;
- an old single-file store is refused with what to do;
- pretraining streamed from the shards gives bitwise the weights of the resident path.
"""

import hashlib
import json
import shutil

import numpy as np
import pytest
import torch

import byol_core.data.filesplit as filesplit
from byol_core.train import loop as train
from byol_core.config import load_params
from byol_core.data.prepared import load_prepared
from byol_core.errors import ByolError
from byol_core.data.ingest import ingest
from byol_core.data.store import ShardWriter, ShardedImages
from conftest import TINY, make_fashion_files, write_params
from sourcefiles import make_imagefolder


def _write(folder, keys, images, shard_bytes):
    writer = ShardWriter(folder, "train", images.shape[1:], shard_bytes)
    writer.write_all(keys, images, rows=37)  # chunks that do not line up with shard ends
    return writer.close()


def _md5s(folder):
    return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(folder.glob("train-*.npy"))}


def test_shards_are_bounded_and_read_back_exactly(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (1000, 3, 8, 8), dtype=np.uint8)
    keys = [f"k/{i:05d}" for i in range(1000)]
    layout = _write(tmp_path, keys, images, shard_bytes=192 * 50)  # at most 50 images a shard
    counts = [s["count"] for s in layout["shards"]]
    assert sum(counts) == 1000 and max(counts) <= 50 and len(counts) >= 20
    assert all(np.load(tmp_path / s["file"]).shape == (s["count"], 3, 8, 8) for s in layout["shards"])
    view = ShardedImages([tmp_path / s["file"] for s in layout["shards"]], counts, (3, 8, 8))
    assert view.shape == (1000, 3, 8, 8) and np.array_equal(view[:], images)
    assert np.array_equal(view[123:877], images[123:877])
    pick = rng.permutation(1000)[:300]
    assert np.array_equal(view.take(pick), images[pick])
    both = view + view
    assert len(both) == 2000 and np.array_equal(both.take(np.array([1999, 0])), images[[999, 0]])


def test_an_insertion_rewrites_only_the_shards_around_it(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (2000, 1, 8, 8), dtype=np.uint8)
    keys = [f"cat/{i:05d}" for i in range(2000)]
    (tmp_path / "a").mkdir()
    _write(tmp_path / "a", keys, images, 64 * 60)
    before = set(_md5s(tmp_path / "a").values())
    # 20 new images in one place of the order (a new batch of files), and 20 at the end
    new = rng.integers(0, 256, (40, 1, 8, 8), dtype=np.uint8)
    order = sorted([(k, images[i]) for i, k in enumerate(keys)] + [(f"cat/00999.{j:02d}", new[j]) for j in range(20)]
                   + [(f"dog/{j:05d}", new[20 + j]) for j in range(20)], key=lambda item: item[0])
    (tmp_path / "b").mkdir()
    _write(tmp_path / "b", [k for k, _ in order], np.stack([x for _, x in order]), 64 * 60)
    after = _md5s(tmp_path / "b")
    changed = [name for name, md5 in after.items() if md5 not in before]
    assert len(after) >= 60  # about 30 images a shard on average
    assert len(changed) <= 4, changed  # the shard(s) around each insertion, and the new tail


def _folder_project(tmp_path, source, **overrides):
    tmp_path.mkdir(parents=True, exist_ok=True)
    return load_params(write_params(tmp_path, {
        **TINY, "data.source": "imagefolder", "data.source_dir": str(source), "data.image_size": 16,
        "data.max_train": None, "data.max_test": None, "data.test_fraction": 0.25, "data.shard_mb": 0.01,
        "pretrain.batch_size": 8, **overrides}))


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_reingest_converts_only_new_files_and_equals_a_fresh_ingest(tmp_path, monkeypatch):
    source = tmp_path / "src"
    make_imagefolder(source, classes=("a", "b", "c"), per_class=30)
    params = _folder_project(tmp_path, source)
    converted = []
    real = filesplit.imagefolder.results

    def counting(paths, *args, **kwargs):
        converted.extend(paths)
        return real(paths, *args, **kwargs)

    monkeypatch.setattr(filesplit.imagefolder, "results", counting)
    first = ingest(params.data, params.paths.prepared, params.paths.cache).card
    assert len(converted) == 90
    assert len(json.loads((params.paths.prepared / "store.json").read_text())["splits"]["train"]["shards"]) > 3
    written = make_imagefolder(source, classes=("a", "b", "c"), per_class=2, start=30, seed=7)
    converted.clear()
    again = ingest(params.data, params.paths.prepared, params.paths.cache).card
    assert sorted(c.split("/src/")[1] for c in converted) == sorted(written)  # the 6 new files only
    assert sum(again.splits.values()) == 96 and again.data_hash != first.data_hash
    incremental = _files(params.paths.prepared)

    fresh = _folder_project(tmp_path / "fresh", source)
    converted.clear()
    scratch = ingest(fresh.data, fresh.paths.prepared, fresh.paths.cache).card
    assert len(converted) == 96
    assert scratch.data_hash == again.data_hash
    assert _files(fresh.paths.prepared) == incremental  # every file, byte for byte


def test_a_changed_file_is_converted_again(tmp_path):
    source = tmp_path / "src"
    make_imagefolder(source, classes=("a", "b"), per_class=12)
    params = _folder_project(tmp_path, source)
    first = ingest(params.data, params.paths.prepared, params.paths.cache).card
    victim = sorted((source / "a").glob("*.png"))[0]
    make_imagefolder(tmp_path / "other", classes=("a",), per_class=1, seed=9)
    victim.write_bytes(next((tmp_path / "other" / "a").glob("*.png")).read_bytes())
    again = ingest(params.data, params.paths.prepared, params.paths.cache).card
    fresh = _folder_project(tmp_path / "fresh", source)
    assert again.data_hash != first.data_hash
    assert ingest(fresh.data, fresh.paths.prepared, fresh.paths.cache).card.data_hash == again.data_hash


def test_an_old_single_file_store_says_to_ingest_again(tmp_path):
    old = tmp_path / "prepared"
    old.mkdir()
    (old / "card.json").write_text(json.dumps({"classes": ["a"], "splits": {"train": 1, "test": 1}}))
    np.save(old / "train_images.npy", np.zeros((1, 1, 8, 8), np.uint8))
    with pytest.raises(ByolError, match="old single-file format.*Run `byol ingest` again"):
        load_prepared(old)


def test_a_damaged_shard_is_named(tmp_path):
    make_fashion_files(tmp_path / "src", n_train=64, n_test=16)
    params = load_params(write_params(tmp_path, {**TINY, "data.source_dir": str(tmp_path / "src"),
                                                 "pretrain.batch_size": 8}))
    ingest(params.data, params.paths.prepared, params.paths.cache)
    shard = params.paths.prepared / "train-00000.npy"
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(ByolError, match=r"train-00000.npy: cannot read image shard .*Run `byol ingest` again"):
        load_prepared(params.paths.prepared).images["train"][:4]


def test_streamed_and_resident_pretraining_give_identical_weights(tmp_path):
    make_fashion_files(tmp_path / "src", n_train=96, n_test=32)
    runs = {}
    for name, budget in (("resident", 1e6), ("streamed", 0)):
        (tmp_path / name).mkdir()
        params = load_params(write_params(tmp_path / name, {
            **TINY, "data.source_dir": str(tmp_path / "src"), "data.shard_mb": 0.02, "pretrain.epochs": 2,
            "pretrain.batch_size": 16, "pretrain.monitor_bank": 32, "pretrain.monitor_queries": 16,
            "pretrain.resident_max_mb": budget}))
        ingest(params.data, params.paths.prepared, params.paths.cache)
        prepared = load_prepared(params.paths.prepared)
        assert len(prepared.images["train"].files) > 1  # several shards, so batches cross them
        lines = []
        state, _ = train.pretrain(params, prepared, torch.device("cpu"), log=lines.append)
        assert any(f"{name} on cpu" in line for line in lines)
        runs[name] = state.model.state_dict()
    resident, streamed = runs["resident"], runs["streamed"]
    assert resident.keys() == streamed.keys()
    assert all(torch.equal(resident[k], streamed[k]) for k in resident)
    assert any(not torch.equal(v, torch.zeros_like(v)) for v in streamed.values())


def _inodes(folder):
    return {p.stat().st_ino for p in folder.glob("train-0*.npy")}


def test_reingest_links_every_shard_the_new_files_did_not_land_in(tmp_path):
    source = tmp_path / "src"
    make_imagefolder(source, classes=("a", "b", "c"), per_class=30)
    params = _folder_project(tmp_path, source)
    ingest(params.data, params.paths.prepared, params.paths.cache)
    before = _inodes(params.paths.prepared)
    assert len(before) > 4
    touched = params.paths.prepared / "train-00000.npy"  # same bytes, new mtime: not trusted any more
    touched.write_bytes(touched.read_bytes())
    touched_inode = touched.stat().st_ino
    before.discard(touched_inode)
    make_imagefolder(source, classes=("zz",), per_class=6, seed=3)  # a new folder: sorts last
    again = ingest(params.data, params.paths.prepared, params.paths.cache).card
    after = _inodes(params.paths.prepared)
    kept = before & after
    assert len(kept) >= len(before) - 2  # all but the shard(s) at the end, where the new files land
    assert touched.stat().st_ino != touched_inode  # rebuilt from the cache, not linked
    fresh = _folder_project(tmp_path / "fresh", source)
    assert ingest(fresh.data, fresh.paths.prepared, fresh.paths.cache).card.data_hash == again.data_hash
    assert _files(fresh.paths.prepared) == _files(params.paths.prepared)


def test_reingest_after_the_prepared_folder_was_deleted_links_every_shard_and_reads_no_pack(tmp_path, monkeypatch):
    """`dvc repro` deletes a stage's outputs before running it: the cache's links to the
    published shards are what a re-ingest takes them from, so no pixel is read again."""
    source = tmp_path / "src"
    make_imagefolder(source, classes=("a", "b", "c"), per_class=30)
    params = _folder_project(tmp_path, source)
    first = ingest(params.data, params.paths.prepared, params.paths.cache).card
    before = _inodes(params.paths.prepared)
    expected = _files(params.paths.prepared)
    shutil.rmtree(params.paths.prepared)
    taken = []
    real_take = filesplit.CheckedPixels.take
    monkeypatch.setattr(filesplit.CheckedPixels, "take", lambda self, a, b: taken.append(b - a) or real_take(self, a, b))
    again = ingest(params.data, params.paths.prepared, params.paths.cache).card
    assert taken == [] and again.data_hash == first.data_hash
    assert _inodes(params.paths.prepared) == before and len(before) > 4
    assert _files(params.paths.prepared) == expected

    # new files: only the shards they land in are written; the links kept are those of the
    # shards published now (none left over from the first layout), one per shard
    make_imagefolder(source, classes=("zz",), per_class=6, seed=3)
    shutil.rmtree(params.paths.prepared)
    ingest(params.data, params.paths.prepared, params.paths.cache)
    assert 0 < sum(taken) < 40
    (kept_folder,) = params.paths.cache.glob("images-*/shards-*")
    kept = {p.stat().st_ino for p in kept_folder.iterdir()}
    published = {p.stat().st_ino for p in params.paths.prepared.glob("*.npy") if not p.name.endswith("-labels.npy")}
    assert kept == published and len(kept) == len(list(kept_folder.iterdir()))


def test_a_shard_dvc_already_holds_is_linked_from_dvcs_cache(tmp_path, monkeypatch):
    """Each written shard's md5 is recorded as it is written; where the DVC cache of the
    repository running the stage holds those bytes, a re-ingest links DVC's file (the inode
    DVC already hashed), and the cache's own link moves to it."""
    source = tmp_path / "src"
    make_imagefolder(source, classes=("a", "b", "c"), per_class=30)
    params = _folder_project(tmp_path, source)
    ingest(params.data, params.paths.prepared, params.paths.cache)
    shards = sorted(params.paths.prepared.glob("train-0*.npy"))
    dvc_cache = tmp_path / ".dvc" / "cache" / "files" / "md5"
    held = {}
    for shard in shards[::2]:  # DVC holds every other shard: copies, as DVC makes them
        md5 = hashlib.md5(shard.read_bytes()).hexdigest()
        (dvc_cache / md5[:2]).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shard, dvc_cache / md5[:2] / md5[2:])
        held[shard.name] = (dvc_cache / md5[:2] / md5[2:]).stat().st_ino
    others = {p.name: p.stat().st_ino for p in shards[1::2]}
    expected = _files(params.paths.prepared)
    shutil.rmtree(params.paths.prepared)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    ingest(params.data, params.paths.prepared, params.paths.cache)
    assert _files(params.paths.prepared) == expected
    now = {p.name: p.stat().st_ino for p in params.paths.prepared.glob("train-0*.npy")}
    assert {name: now[name] for name in held} == held  # DVC's files, linked
    assert {name: now[name] for name in others} == others  # the cache's own links, as before
    (kept_folder,) = params.paths.cache.glob("images-*/shards-*")
    assert set(held.values()) <= {p.stat().st_ino for p in kept_folder.iterdir()}
