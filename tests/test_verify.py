"""Nothing silently wrong: damaged bytes are found, never passed on.

- bytes flipped in the conversion cache's packs, or a pack cut short, are converted again
  from the source files: the prepared data equals a from-scratch ingest's bit for bit, and
  ingest says once how many entries it repaired;
- a cache kept before digests were is converted again as if absent;
- ``byol verify`` names each planted damage (a shard, a label file, the manifest, the card,
  a cache pack, the embeddings' vectors) with how to repair it, exits 1, and passes (exit
  0, one summary line) on a healthy project, and again after the repair it advised.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import sqlite3

import numpy as np
import pytest
import torch

import byol_core.data.filesplit as filesplit
from byol_core import stages
from byol_core.train.checkpoint import save_encoder
from byol_core.cli import main
from byol_core.config import load_params
from byol_core.data.ingest import ingest
from byol_core.train.nets import EncoderSpec, build_encoder
from conftest import TINY, write_params
from sourcefiles import make_imagefolder

SIZE = 16  # data.image_size: RGB rows of 3 * 16 * 16 bytes in the packs
ROW_BYTES = 3 * SIZE * SIZE


def _project(root, source, **overrides):
    root.mkdir(parents=True, exist_ok=True)
    return load_params(write_params(root, {
        **TINY, "data.source": "imagefolder", "data.source_dir": str(source), "data.image_size": SIZE,
        "data.max_train": None, "data.max_test": None, "data.test_fraction": 0.25, "data.shard_mb": 0.01,
        "pretrain.batch_size": 8, "export.parity_images": 8, **overrides}))


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _pack(params):
    packs = sorted(params.paths.cache.glob("images-*/pack-*.u8"))
    assert len(packs) == 1
    return packs[0]


def _unpublish(params):
    """Delete the prepared folder and the cache's links to its shards, so that the next ingest
    writes every shard from the cache's packs (a prepared folder deleted alone, as `dvc
    repro` deletes it, is linked back whole)."""
    shutil.rmtree(params.paths.prepared)
    for kept in params.paths.cache.glob("images-*/shards-*"):
        shutil.rmtree(kept)


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
    _unpublish(params)  # every shard is then written from the cache's packs, none linked
    capsys.readouterr()
    ingest(params.data, params.paths.prepared, params.paths.cache)
    err = capsys.readouterr().err
    assert _files(params.paths.prepared) == scratch  # every file, byte for byte
    assert _damage_lines(err) == [f"ingest: 3 damaged entries in {pack.parent} were converted again"]

    _unpublish(params)  # repaired in the cache too: the next ingest finds nothing
    ingest(params.data, params.paths.prepared, params.paths.cache)
    assert _damage_lines(capsys.readouterr().err) == []
    assert _files(params.paths.prepared) == scratch


def test_a_cut_pack_is_converted_again(tmp_path, source, scratch, capsys):
    params = _project(tmp_path / "project", source)
    ingest(params.data, params.paths.prepared, params.paths.cache)
    pack = _pack(params)
    with open(pack, "r+b") as handle:
        handle.truncate(27 * ROW_BYTES + 10)  # rows 27, 28 and 29 gone or cut
    _unpublish(params)
    capsys.readouterr()
    ingest(params.data, params.paths.prepared, params.paths.cache)
    assert _damage_lines(capsys.readouterr().err) == [f"ingest: 3 damaged entries in {pack.parent} were converted again"]
    assert _files(params.paths.prepared) == scratch


def test_a_cache_kept_before_digests_is_converted_again_as_if_absent(tmp_path, source, scratch, capsys, monkeypatch):
    params = _project(tmp_path / "project", source)
    ingest(params.data, params.paths.prepared, params.paths.cache)
    index = _pack(params).parent / "index.sqlite"
    with contextlib.closing(sqlite3.connect(index)) as db:  # the index as it was before digests (and generations)
        db.execute("ALTER TABLE files DROP COLUMN digest")
        db.execute("ALTER TABLE files DROP COLUMN gen")
        db.execute("DROP TABLE generation")
        db.commit()
    (index.parent / "index.parquet").unlink()  # a copy of the index with its digests, made since
    _flip(_pack(params), [5])  # undetectable without a digest: so it must not be trusted
    converted = []
    real = filesplit.imagefolder.results
    monkeypatch.setattr(filesplit.imagefolder, "results",
                        lambda paths, *a, **k: (converted.extend(paths), real(paths, *a, **k))[1])
    _unpublish(params)
    capsys.readouterr()
    ingest(params.data, params.paths.prepared, params.paths.cache)
    assert len(converted) == 30 and _damage_lines(capsys.readouterr().err) == []
    assert _files(params.paths.prepared) == scratch


# --- byol verify ----------------------------------------------------------------------


def _verify(params_path):
    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.redirect_stderr(io.StringIO()) as err:
        code = main(["verify", "--params", str(params_path)])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def healthy(tmp_path_factory):
    """An image-folder project with prepared data, its cache, an encoder, its ONNX file and
    the embeddings: every piece ``byol verify`` checks."""
    root = tmp_path_factory.mktemp("healthy")
    make_imagefolder(root / "src", classes=("a", "b", "c"), per_class=10)
    params = _project(root, "src")
    ingest(params.data, params.paths.prepared, params.paths.cache)
    spec = EncoderSpec("resnet18", 0.125, 3, True)
    torch.manual_seed(0)
    save_encoder(params.paths.encoder, build_encoder(spec), spec, {"size": SIZE, "mean": [0.5] * 3, "std": [0.25] * 3})
    for stage in ("export", "embed"):
        stages.run(stage, params)
    return root


@pytest.fixture
def project(tmp_path, healthy):
    root = tmp_path / "project"
    shutil.copytree(healthy, root, symlinks=True)
    return root


def test_verify_passes_a_healthy_project_with_one_summary_line(project):
    code, out, err = _verify(project / "params.yaml")
    assert (code, err) == (0, "")
    assert len(out.splitlines()) == 1 and out.startswith("verify: ")
    assert "shards (30 images) and 2 label files match their digests" in out
    assert ": 30 entries match their digests" in out
    assert "embeddings.parquet and vectors.npy match their digests" in out


def _shard(root):
    return sorted((root / "data" / "prepared").glob("train-0*.npy"))[1]


def _flip_last(path, n=1):
    """Flip a byte in the last ``n`` bytes' first (the data, past any header)."""
    _flip(path, [path.stat().st_size - n])


def _plant_labels(root):
    path = root / "data" / "prepared" / "test-labels.npy"
    labels = np.load(path)
    labels[0] = (labels[0] + 1) % 3  # still a valid class: only the record can tell
    np.save(path, labels)


def _plant_card(root):
    path = root / "data" / "prepared" / "card.json"
    card = json.loads(path.read_text())
    card["data_hash"] = "0" * 16
    path.write_text(json.dumps(card))


def _plant_manifest(root):
    import pandas as pd

    path = root / "data" / "prepared" / "manifest.parquet"
    manifest = pd.read_parquet(path)
    manifest.loc[3, "content_hash"] = "f" * 16
    manifest.to_parquet(path, index=False)


PLANTED = {
    "shard": (lambda root: _flip_last(_shard(root), 300),
              r"data/prepared/train-00001\.npy: 1 of its \d+ images differs from the digests recorded when it was "
              r"written\. Delete it, then restore it with `dvc checkout ingest` or run `byol ingest` again\."),
    "label file": (_plant_labels, r"data/prepared/test-labels\.npy: 1 of its \d+ labels differs from those recorded "
                                  r"in manifest\.parquet\. Delete it, then restore it"),
    "manifest": (_plant_manifest, r"data/prepared/manifest\.parquet: its content hashes or labels differ from the "
                                  r"shards and label files, which match card\.json's data hash"),
    "card": (_plant_card, r"data/prepared/card\.json: its data hash differs from that of the shards and labels, "
                          r"which match manifest\.parquet"),
    "cache pack": (lambda root: _flip(next((root / ".byol" / "cache").glob("images-*/pack-*.u8")), [ROW_BYTES * 4]),
                   r"\.byol/cache/images-3x16-v\d+: 1 of its 30 entries is damaged \(the pixels differ from the digest "
                   r"stored when they were written, or are gone from their pack\)\. Delete that folder"),
    "cut cache pack": (lambda root: next((root / ".byol" / "cache").glob("images-*/pack-*.u8")).write_bytes(b""),
                       r"images-3x16-v\d+: 30 of its 30 entries are damaged"),
    "embeddings' vectors": (lambda root: _flip_last(root / "data" / "embeddings" / "vectors.npy"),
                            r"data/embeddings/vectors\.npy: its sha256 differs from the one recorded when it was "
                            r"written\. Delete it, then restore it with `dvc checkout embed` or run `byol embed` "
                            r"again\."),
}


@pytest.mark.parametrize("damage", list(PLANTED))
def test_verify_names_each_planted_damage_and_how_to_repair_it(project, damage):
    plant, expected = PLANTED[damage]
    plant(project)
    code, out, err = _verify(project / "params.yaml")
    lines = err.splitlines()
    assert (code, out, len(lines)) == (1, "", 1), err
    assert re.search(expected, lines[0].removeprefix("byol verify: error: ")), lines[0]
    assert "Traceback" not in err


def test_verify_passes_again_after_the_repair_it_advised(project, capsys):
    shard = _shard(project)
    _flip_last(shard, 300)
    assert _verify(project / "params.yaml")[0] == 1
    shard.unlink()  # "Delete it, then ... run `byol ingest` again": rebuilt from the cache, not linked
    params = load_params(project / "params.yaml")
    ingest(params.data, params.paths.prepared, params.paths.cache)
    code, out, err = _verify(project / "params.yaml")
    assert (code, err) == (0, ""), err
