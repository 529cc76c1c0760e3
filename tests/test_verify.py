"""Nothing silently wrong: damaged bytes are found, never passed on.

- bytes flipped in the conversion cache's packs, or a pack cut short, are converted again
  from the source files: the prepared data equals a from-scratch ingest's bit for bit, and
  ingest says once how many entries it repaired;
- a cache kept before digests were is converted again as if absent.
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3

import pytest

import byol_core.filesplit as filesplit
from byol_core.config import load_params
from byol_core.ingest import ingest
from conftest import TINY, write_params
from sourcefiles import make_imagefolder

SIZE = 16  # data.image_size: RGB rows of 3 * 16 * 16 bytes in the packs
ROW_BYTES = 3 * SIZE * SIZE


def _project(root, source, **overrides):
    root.mkdir(parents=True, exist_ok=True)
    return load_params(write_params(root, {
        **TINY, "data.source": "imagefolder", "data.source_dir": str(source), "data.image_size": SIZE,
        "data.max_train": None, "data.max_test": None, "data.test_fraction": 0.25, "data.shard_mb": 0.01,
        "pretrain.batch_size": 8, **overrides}))


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _pack(params):
    packs = sorted(params.paths.cache.glob("images-*/pack-*.u8"))
    assert len(packs) == 1
    return packs[0]


def _flip(path, offsets):
    data = bytearray(path.read_bytes())
    for at in offsets:
        data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def _damage_lines(text):
    return [line for line in text.splitlines() if "damaged" in line]


@pytest.fixture
def source(tmp_path):
    make_imagefolder(tmp_path / "src", classes=("a", "b", "c"), per_class=10)
    return tmp_path / "src"


@pytest.fixture
def scratch(tmp_path, source):
    """The prepared files of a from-scratch ingest (its own, empty cache)."""
    fresh = _project(tmp_path / "fresh", source)
    ingest(fresh.data, fresh.paths.prepared, fresh.paths.cache)
    return _files(fresh.paths.prepared)


def test_flipped_bytes_in_a_cache_pack_are_converted_again_and_never_reach_the_data(tmp_path, source, scratch,
                                                                                   capsys):
    params = _project(tmp_path / "project", source)
    ingest(params.data, params.paths.prepared, params.paths.cache)
    pack = _pack(params)
    assert pack.stat().st_size == 30 * ROW_BYTES
    _flip(pack, [0 * ROW_BYTES + 5, 7 * ROW_BYTES + 100, 22 * ROW_BYTES + ROW_BYTES - 1, 22 * ROW_BYTES])  # 3 rows
    shutil.rmtree(params.paths.prepared)  # every shard is then written from the cache, none linked
    capsys.readouterr()
    ingest(params.data, params.paths.prepared, params.paths.cache)
    err = capsys.readouterr().err
    assert _files(params.paths.prepared) == scratch  # every file, byte for byte
    assert _damage_lines(err) == [f"ingest: 3 damaged entries in {pack.parent} were converted again"]

    shutil.rmtree(params.paths.prepared)  # repaired in the cache too: the next ingest finds nothing
    ingest(params.data, params.paths.prepared, params.paths.cache)
    assert _damage_lines(capsys.readouterr().err) == []
    assert _files(params.paths.prepared) == scratch


def test_a_cut_pack_is_converted_again(tmp_path, source, scratch, capsys):
    params = _project(tmp_path / "project", source)
    ingest(params.data, params.paths.prepared, params.paths.cache)
    pack = _pack(params)
    with open(pack, "r+b") as handle:
        handle.truncate(27 * ROW_BYTES + 10)  # rows 27, 28 and 29 gone or cut
    shutil.rmtree(params.paths.prepared)
    capsys.readouterr()
    ingest(params.data, params.paths.prepared, params.paths.cache)
    assert _damage_lines(capsys.readouterr().err) == [f"ingest: 3 damaged entries in {pack.parent} were converted again"]
    assert _files(params.paths.prepared) == scratch


def test_a_cache_kept_before_digests_is_converted_again_as_if_absent(tmp_path, source, scratch, capsys, monkeypatch):
    params = _project(tmp_path / "project", source)
    ingest(params.data, params.paths.prepared, params.paths.cache)
    index = _pack(params).parent / "index.sqlite"
    with contextlib.closing(sqlite3.connect(index)) as db:  # the index as it was before digests
        db.execute("ALTER TABLE files DROP COLUMN digest")
        db.commit()
    _flip(_pack(params), [5])  # undetectable without a digest: so it must not be trusted
    converted = []
    real = filesplit.imagefolder.results
    monkeypatch.setattr(filesplit.imagefolder, "results",
                        lambda paths, *a, **k: (converted.extend(paths), real(paths, *a, **k))[1])
    shutil.rmtree(params.paths.prepared)
    capsys.readouterr()
    ingest(params.data, params.paths.prepared, params.paths.cache)
    assert len(converted) == 30 and _damage_lines(capsys.readouterr().err) == []
    assert _files(params.paths.prepared) == scratch
