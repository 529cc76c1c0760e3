"""The source listing (byol_core.data.scan): byte-stable, read only where something changed, held
against the folder by ingest, tracked by DVC in place of the folder, and the same record
that Dagster's observation versions."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from byol_core import stages

from byol_core.data import scan
from byol_core.config import load_params
from byol_core.errors import ByolError
from conftest import SOURCE, TINY, TINY_DVC, dvc, make_project, write_params


def _folder(root: Path, n: int = 12) -> Path:
    """Two class folders of small PNGs, a nested folder, and what the scan must pass over."""
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / ("cat" if i % 2 else "dog")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    (root / "dog" / "deep" / "er").mkdir(parents=True)
    (root / "dog" / "deep" / "er" / "z.png").write_bytes((root / "dog" / "000.png").read_bytes())
    (root / ".hidden").write_text("not listed")
    (root / "cat" / ".DS_Store").write_text("not listed")
    return root


def _listing(folder: Path, cache: Path, **kwargs) -> scan.Listing:
    return scan.scan(folder, cache, **kwargs)


def _bytes(listing: scan.Listing, tmp: Path) -> bytes:
    listing.write(tmp / "listing.parquet")
    return (tmp / "listing.parquet").read_bytes()


class Counting:
    """A reader that counts which files it read."""

    def __init__(self):
        self.paths: list[str] = []
        self.read = scan.read_digest

    def __call__(self, path: str, size: int, mtime: int):
        self.paths.append(path)
        return self.read(path, size, mtime)


def test_the_listing_names_every_file_with_its_size_and_digest(tmp_path):
    folder = _folder(tmp_path / "src")
    table = _listing(folder, tmp_path / "cache").table
    rows = table.to_pylist()
    assert [r["path"] for r in rows] == ["cat/001.png", "cat/003.png", "cat/005.png", "cat/007.png", "cat/009.png",
                                         "cat/011.png", "dog/000.png", "dog/002.png", "dog/004.png", "dog/006.png",
                                         "dog/008.png", "dog/010.png", "dog/deep/er/z.png"]
    for row in rows:
        data = (folder / row["path"]).read_bytes()
        assert row["size"] == len(data)
        assert row["digest"] == hashlib.blake2b(data, digest_size=16).digest()  # b2sum -l 128
    assert table.schema.names == ["path", "size", "digest"] and "mtime" not in str(table.schema)


def test_the_listing_is_byte_stable_across_scans_and_across_a_copy_with_other_mtimes(tmp_path):
    folder = _folder(tmp_path / "src")
    first = _listing(folder, tmp_path / "cache")
    again = _listing(folder, tmp_path / "cache")
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)  # new mtimes, and read afresh (another side cache)
    for path in copy.rglob("*.png"):
        os.utime(path, ns=(1_000_000_000, 1_000_000_000 + hash(path.name) % 1000))
    other = _listing(copy, tmp_path / "other-cache")
    assert other.read == 13 and again.read == 0
    assert _bytes(first, tmp_path / "a") == _bytes(again, tmp_path / "b") == _bytes(other, tmp_path / "c")
    assert first.md5 == again.md5 == other.md5 == hashlib.md5(_bytes(first, tmp_path / "d")).hexdigest()


def test_an_unchanged_file_is_not_read_again(tmp_path):
    folder = _folder(tmp_path / "src")
    reader = Counting()
    _listing(folder, tmp_path / "cache", reader=reader)
    assert len(reader.paths) == 13
    reader.paths.clear()
    _listing(folder, tmp_path / "cache", reader=reader)
    assert reader.paths == []
    (folder / "cat" / "new.png").write_bytes((folder / "cat" / "001.png").read_bytes())
    os.utime(folder / "dog" / "002.png")  # touched: read again, same digest
    _listing(folder, tmp_path / "cache", reader=reader)
    assert sorted(reader.paths) == [str(folder / "cat" / "new.png"), str(folder / "dog" / "002.png")]


def test_the_stage_reads_through_the_same_reader_and_force_reads_everything(tmp_path, monkeypatch):
    folder = _folder(tmp_path / "src")
    params = load_params(write_params(tmp_path, {**TINY, "data.source": "imagefolder", "data.source_dir": "src",
                                                 "data.image_size": 16}))
    reader = Counting()
    monkeypatch.setattr(scan, "read_digest", reader)
    line, metrics = stages.run("scan", params)
    assert line.startswith(f"scan: {folder}: 13 files") and metrics["read"] == 13 and len(reader.paths) == 13
    assert metrics["md5"] == hashlib.md5(params.paths.listing.read_bytes()).hexdigest()
    _, metrics = stages.run("scan", params)
    assert metrics["read"] == 0 and len(reader.paths) == 13
    _, forced = stages.run("scan", params, force=True)
    assert forced["read"] == 13 and len(reader.paths) == 26 and forced["md5"] == metrics["md5"]


def test_added_removed_and_changed_files_change_the_listing_and_a_touch_does_not(tmp_path):
    folder = _folder(tmp_path / "src")
    cache = tmp_path / "cache"
    base = _listing(folder, cache).md5
    os.utime(folder / "cat" / "001.png")
    assert _listing(folder, cache).md5 == base
    versions = {base}
    (folder / "cat" / "new.png").write_bytes(b"a new file")
    versions.add(_listing(folder, cache).md5)
    (folder / "cat" / "new.png").write_bytes(b"a new filE")  # same size, other contents
    versions.add(_listing(folder, cache).md5)
    (folder / "cat" / "new.png").unlink()
    assert _listing(folder, cache).md5 == base  # back as it was
    (folder / "dog" / "000.png").unlink()
    versions.add(_listing(folder, cache).md5)
    (folder / "cat" / "001.png").rename(folder / "cat" / "001b.png")
    versions.add(_listing(folder, cache).md5)
    assert len(versions) == 5


def test_a_rewrite_with_the_same_size_and_mtime_is_seen_only_under_force(tmp_path):
    folder = _folder(tmp_path / "src")
    cache = tmp_path / "cache"
    before = _listing(folder, cache).md5
    path = folder / "cat" / "001.png"
    info = path.stat()
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))
    assert _listing(folder, cache).md5 == before  # what the side cache cannot see (docs/data.md)
    forced = _listing(folder, cache, force=True)
    assert forced.md5 != before and forced.read == 13
    assert _listing(folder, cache).md5 == forced.md5  # the side cache now holds the new digest


def test_links_fifos_dot_names_and_names_that_are_not_utf8(tmp_path):
    folder = _folder(tmp_path / "src", n=2)
    os.symlink("nowhere.png", folder / "cat" / "dangling.png")
    os.symlink("001.png", folder / "cat" / "link.png")
    os.symlink("..", folder / "cat" / "loop")  # a folder link: not followed
    os.mkfifo(folder / "cat" / "pipe.png")  # opening it would block
    odd = os.fsencode(folder / "dog") + b"/caf\xe9.png"
    with open(odd, "wb") as handle:
        handle.write(b"latin-1 name")
    rows = {r["path"]: r for r in _listing(folder, tmp_path / "cache").table.to_pylist()}
    assert set(rows) == {"cat/001.png", "cat/dangling.png", "cat/link.png", "dog/000.png", "dog/caf\\xe9.png",
                         "dog/deep/er/z.png"}
    assert rows["cat/dangling.png"]["size"] == -1 and rows["cat/dangling.png"]["digest"] is None
    assert rows["cat/link.png"]["digest"] == rows["cat/001.png"]["digest"]
    assert rows["dog/caf\\xe9.png"]["digest"] == hashlib.blake2b(b"latin-1 name", digest_size=16).digest()
    with open(os.fsencode(folder / "dog") + b"/caf\\xe9.png", "wb") as handle:  # its escape, literally
        handle.write(b"twin")
    with pytest.raises(ByolError, match=r"both listed as 'dog/caf\\xe9\.png'.*Rename one of them"):
        _listing(folder, tmp_path / "cache")


def _every_folder(root: Path) -> list[Path]:
    return [root] + sorted(Path(parent) / name for parent, dirs, _ in os.walk(root) for name in dirs
                           if not name.startswith("."))


def test_the_scans_file_index_answers_as_the_image_folder_reader_walks(tmp_path):
    """Ingest's reader takes its files from the check's walk instead of walking again: for every
    folder (names that sort around "/", a deep one, links, a FIFO, a name that is not UTF-8),
    the index gives what list_images finds, in the same order."""
    from byol_core.data.sources import imagefolder

    folder = _folder(tmp_path / "src", n=6)
    for name in ("dog-a", "dog.b", "dog0", "do"):  # beside "dog/": "-" and "." sort below "/", "0" above
        (folder / name).mkdir()
        (folder / name / "x.png").write_bytes((folder / "dog" / "000.png").read_bytes())
    (folder / "dog" / "a-b.png").write_bytes(b"x")
    (folder / "dog" / "a" / "b").mkdir(parents=True)
    (folder / "dog" / "a" / "b" / "c.png").write_bytes(b"x")
    os.symlink("nowhere.png", folder / "cat" / "dangling.png")
    os.symlink("001.png", folder / "cat" / "link.png")
    os.mkfifo(folder / "cat" / "pipe.png")
    with open(os.fsencode(folder / "dog") + b"/caf\xe9.png", "wb") as handle:
        handle.write(b"latin-1 name")
    index = _listing(folder, tmp_path / "cache").file_index()
    assert index is not None
    for sub in _every_folder(folder):
        assert index.below(sub.relative_to(folder).as_posix() if sub != folder else "") == \
            imagefolder.list_images(sub, folder), sub
    os.symlink(folder / "dog", folder / "dog-linked")  # the reader follows it, the scan does not
    assert _listing(folder, tmp_path / "cache").file_index() is None


def test_an_ingest_through_the_scans_index_equals_one_that_walks(tmp_path):
    from byol_core.data import ingest
    from byol_core.config import load_params

    folder = _folder(tmp_path / "src", n=16)
    (folder / "unlabeled" / "more").mkdir(parents=True)
    (folder / "unlabeled" / "more" / "u.png").write_bytes((folder / "cat" / "001.png").read_bytes())
    write_params(tmp_path, {**TINY, "data.source": "imagefolder", "data.source_dir": "src", "data.image_size": 16,
                            "data.test_fraction": 0.25})
    cfg = load_params(tmp_path / "params.yaml").data
    index = _listing(folder, tmp_path / "cache").file_index()
    walked = ingest.ingest(cfg, tmp_path / "walked", tmp_path / "cache1").card
    indexed = ingest.ingest(cfg, tmp_path / "indexed", tmp_path / "cache2", index).card
    assert indexed == walked and walked.splits["unlabeled"] == 1
    for name in ("manifest.parquet", "store.json"):
        assert (tmp_path / "walked" / name).read_bytes() == (tmp_path / "indexed" / name).read_bytes()


@pytest.mark.parametrize("run", [1, 2, 3, 1 << 16])
def test_the_side_cache_is_matched_run_by_run_in_listing_order(tmp_path, monkeypatch, run):
    """When files were added and removed, the side cache's rows are found a run of walked paths
    at a time, between bisections: only the new files are read, whatever the run length, and
    names that sort around "/" ("dog-a", "dog/...", "dog0") are matched."""
    monkeypatch.setattr(scan, "LOOKUP_ROWS", run)
    folder = _folder(tmp_path / "src", n=12)
    for name in ("dog-a", "dog0", "a", "zz"):
        (folder / name).mkdir()
        (folder / name / "x.png").write_bytes(b"x" * len(name))
    _listing(folder, tmp_path / "cache")
    for name in ("cat/000b.png", "dog-a/y.png", "dog/deep/a.png", "zz/0.png", "0.png"):
        (folder / name).write_bytes(name.encode())
    (folder / "dog" / "004.png").unlink()
    (folder / "a" / "x.png").unlink()
    counting = Counting()
    listing = _listing(folder, tmp_path / "cache", reader=counting)
    assert sorted(Path(p).relative_to(folder).as_posix() for p in counting.paths) == \
        ["0.png", "cat/000b.png", "dog-a/y.png", "dog/deep/a.png", "zz/0.png"]
    assert _bytes(listing, tmp_path) == _bytes(_listing(folder, tmp_path / "fresh", force=True), tmp_path)


def test_a_damaged_side_cache_is_read_past_and_rebuilt(tmp_path):
    folder = _folder(tmp_path / "src")
    cache = tmp_path / "cache"
    first = _listing(folder, cache)
    kept = scan.side_cache(cache, folder)
    data = bytearray(kept.read_bytes())
    at = data.find(first.table["digest"][3].as_py())  # a digest the next scan would take from it
    data[at] ^= 0xFF
    kept.write_bytes(bytes(data))
    again = _listing(folder, cache)
    assert again.md5 == first.md5 and again.read == 13
    assert _listing(folder, cache).read == 0


def test_a_missing_folder_lists_nothing_and_a_file_is_refused(tmp_path):
    assert _listing(tmp_path / "nothing", tmp_path / "cache").files == 0
    (tmp_path / "file").write_text("x")
    with pytest.raises(ByolError, match="data.source_dir .*file is a file, not a folder"):
        _listing(tmp_path / "file", tmp_path / "cache")


def test_the_listing_may_not_lie_inside_the_source(tmp_path):
    with pytest.raises(ByolError, match=r"paths\.listing \(.*src/listing\.parquet\) lies inside data\.source_dir"):
        load_params(write_params(tmp_path, {"data.source_dir": "src", "paths.listing": "src/listing.parquet"}))
    with pytest.raises(ByolError, match=r"paths\.cache \(.*\) lies inside data\.source_dir"):
        load_params(write_params(tmp_path, {"data.source_dir": ".", "paths.listing": "/tmp/x.parquet"}))


def _byol(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "byol_core.cli", *args, "--params", str(root / "params.yaml")],
                          capture_output=True, text=True, timeout=300)


def test_ingest_refuses_a_folder_that_changed_since_the_scan_and_writes_nothing(tmp_path):
    folder = _folder(tmp_path / "src")
    write_params(tmp_path, {**TINY, "data.source": "imagefolder", "data.source_dir": "src", "data.image_size": 16,
                            "data.test_fraction": 0.25})
    assert _byol(tmp_path, "scan").returncode == 0
    (folder / "cat" / "late.png").write_bytes((folder / "cat" / "001.png").read_bytes())
    (folder / "dog" / "000.png").unlink()
    done = _byol(tmp_path, "ingest")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip() == (
        f"byol ingest: error: data.source_dir {folder} changed since {tmp_path / 'data' / 'source.parquet'} was "
        "written: 1 added (cat/late.png); 1 removed (dog/000.png). Run `byol scan` to list it as it is now "
        "(`dvc repro` runs scan before ingest), then ingest again.")
    assert not (tmp_path / "data" / "prepared").exists()
    assert _byol(tmp_path, "scan").returncode == 0
    done = _byol(tmp_path, "ingest")
    assert done.returncode == 0, done.stderr


# --- DVC and Dagster on the listing -------------------------------------------------------------


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A scratch project after `dvc repro ingest` (scan, then ingest)."""
    root = make_project(tmp_path_factory.mktemp("scan") / "project", TINY_DVC)
    result = dvc(root, "repro", "ingest")
    assert "Running stage 'scan'" in result.stdout and "Running stage 'ingest'" in result.stdout
    return root


def _status(root: Path, *targets: str) -> dict:
    import json

    return json.loads(dvc(root, "status", "--json", *targets).stdout)


def test_dvc_tracks_the_listing_not_the_folder(project):
    stages_ = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    assert "${paths.listing}" in stages_["ingest"]["deps"] and "${data.source_dir}" not in stages_["ingest"]["deps"]
    assert stages_["scan"]["always_changed"] is True
    assert stages_["scan"]["outs"] == [{"${paths.listing}": {"persist": True}}]
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    assert [d["path"] for d in lock["ingest"]["deps"] if not d["path"].startswith("byol_core/")] == [
        "data/source.parquet"]
    assert not any(d["path"].startswith("data/raw") for s in lock.values() for d in s.get("deps", []))
    assert "/data/raw/" in (project / ".dvcignore").read_text().split()


def test_dvc_status_of_ingest_is_clean_after_a_no_op_and_dirty_after_a_new_file(project):
    assert _status(project, "ingest") == {}
    again = dvc(project, "repro", "ingest")  # scan runs (always), finds nothing new: ingest skipped
    assert "Running stage 'scan'" in again.stdout and "Stage 'ingest' didn't change, skipping" in again.stdout
    assert _status(project, "ingest") == {}
    assert _status(project, "scan") == {"scan": ["always changed"]}  # what `dvc status` always says of it
    for path in (project / SOURCE).iterdir():  # rewritten with the same bytes: new mtimes only
        path.write_bytes(path.read_bytes())
    dvc(project, "repro", "--single-item", "scan")
    assert _status(project, "ingest") == {}
    (project / SOURCE / "notes.txt").write_text("a file the folder did not have")
    assert _status(project, "ingest") == {}  # DVC does not look into the folder: the scan does
    dvc(project, "repro", "--single-item", "scan")
    assert _status(project, "ingest") == {"ingest": [{"changed deps": {"data/source.parquet": "modified"}}]}
    result = dvc(project, "repro", "ingest")
    assert "Running stage 'ingest'" in result.stdout
    assert _status(project, "ingest") == {}
    (project / SOURCE / "notes.txt").unlink()
    dvc(project, "repro", "ingest")


def test_the_observation_fingerprint_is_the_listing_md5_that_dvc_records(project):
    from pipelines.assets import observe_folder, source_fingerprint

    params = load_params(project / "params.yaml")
    dvc(project, "repro", "--single-item", "scan")
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    recorded = lock["scan"]["outs"][0]["md5"]
    assert recorded == hashlib.md5(params.paths.listing.read_bytes()).hexdigest()
    before = params.paths.listing.read_bytes()
    assert source_fingerprint(params.data.source_dir, params.paths.cache) == recorded
    observed = observe_folder(params.data.source_dir, params.paths.cache)
    assert observed.data_version.value == recorded and observed.metadata["files"].value == 4
    assert params.paths.listing.read_bytes() == before  # the observation writes no listing
    assert pq.read_metadata(params.paths.listing).num_rows == 4


def test_the_observation_scans_in_a_process_of_its_own_and_fails_with_the_scans_message(tmp_path, monkeypatch):
    import dagster as dg

    from pipelines.assets import observe_folder

    folder = _folder(tmp_path / "src")
    expected = scan.scan(folder, tmp_path / "other").md5
    monkeypatch.setattr(scan, "walk", lambda *a: pytest.fail("the scan ran in the code location's process"))
    assert observe_folder(folder, tmp_path / "cache").data_version.value == expected
    (tmp_path / "afile").write_text("x")
    with pytest.raises(dg.Failure) as failed:
        observe_folder(tmp_path / "afile", tmp_path / "cache")
    assert failed.value.description == (f"data.source_dir {tmp_path / 'afile'} is a file, not a folder. Point it at "
                                        "the folder of the source's files.")


# --- ingest trusting the scan's record instead of walking again -------------------------------


def _scanned_project(tmp_path: Path) -> tuple[Path, object]:
    folder = _folder(tmp_path / "src", n=16)
    write_params(tmp_path, {**TINY, "data.source": "imagefolder", "data.source_dir": "src", "data.image_size": 16,
                            "data.test_fraction": 0.25})
    params = load_params(tmp_path / "params.yaml")
    scan.scan(folder, params.paths.cache).write(params.paths.listing)
    return folder, params


def _index_rows(index) -> list:
    return index.below("")


def test_an_unchanged_folder_is_taken_from_the_scans_record_without_a_walk(tmp_path, monkeypatch):
    folder, params = _scanned_project(tmp_path)
    walked = scan.check(params.paths.listing, folder, params.paths.cache).file_index()
    monkeypatch.setattr(scan, "walk", lambda *a: pytest.fail("walked the folder again"))
    index = scan.unchanged_index(params.paths.listing, folder, params.paths.cache)
    assert index is not None and _index_rows(index) == _index_rows(walked) and len(_index_rows(index)) == 17


def test_a_source_folder_that_is_a_symlink_is_taken_from_the_record_too(tmp_path):
    folder, params = _scanned_project(tmp_path)
    linked = tmp_path / "linked-src"
    linked.symlink_to(folder, target_is_directory=True)
    scan.scan(linked, params.paths.cache).write(params.paths.listing)
    index = scan.unchanged_index(params.paths.listing, linked, params.paths.cache)
    assert index is not None and len(index.below("")) == 17


@pytest.mark.parametrize("change", ["add", "remove", "rename", "add deep", "new folder", "listing"])
def test_any_file_added_removed_or_renamed_since_the_scan_makes_ingest_walk(tmp_path, change):
    folder, params = _scanned_project(tmp_path)
    png = (folder / "cat" / "001.png").read_bytes()
    if change == "add":
        (folder / "cat" / "new.png").write_bytes(png)
    elif change == "remove":
        (folder / "dog" / "002.png").unlink()
    elif change == "rename":
        (folder / "dog" / "002.png").rename(folder / "dog" / "zz.png")
    elif change == "add deep":
        (folder / "dog" / "deep" / "er" / "new.png").write_bytes(png)
    elif change == "new folder":
        (folder / "bird").mkdir()
    else:  # a listing other than the one the last scan wrote (one from another checkout, say)
        params.paths.listing.write_bytes(params.paths.listing.read_bytes() + b"\0")
    assert scan.unchanged_index(params.paths.listing, folder, params.paths.cache) is None


def test_no_record_without_a_complete_side_cache_a_folder_link_or_odd_names(tmp_path):
    folder, params = _scanned_project(tmp_path)
    assert scan.unchanged_index(params.paths.listing, folder, params.paths.cache) is not None
    (folder / "cat" / "locked.png").symlink_to(folder / "nowhere.png")  # listed without a digest: not in the side cache
    scan.scan(folder, params.paths.cache).write(params.paths.listing)
    assert scan.unchanged_index(params.paths.listing, folder, params.paths.cache) is None
    (folder / "cat" / "locked.png").unlink()
    (folder / "linked").symlink_to(folder / "dog", target_is_directory=True)
    scan.scan(folder, params.paths.cache).write(params.paths.listing)
    assert scan.unchanged_index(params.paths.listing, folder, params.paths.cache) is None
    (folder / "linked").unlink()
    scan.scan(folder, params.paths.cache).write(params.paths.listing)
    assert scan.unchanged_index(params.paths.listing, folder, params.paths.cache) is not None


def test_a_file_rewritten_in_place_after_the_scan_is_refused_if_it_must_be_converted(tmp_path):
    folder, params = _scanned_project(tmp_path)
    first = folder / "cat" / "003.png"
    before = os.stat(folder / "cat").st_mtime_ns
    Image.fromarray(np.zeros((20, 20, 3), dtype=np.uint8)).save(first)  # after the scan, not converted yet
    assert os.stat(folder / "cat").st_mtime_ns == before  # rewritten in place: its folder does not show it
    done = _byol(tmp_path, "ingest")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip() == (
        f"byol ingest: error: {first}: changed since data.source_dir was listed. Run `byol scan` to list it as it "
        "is now (`dvc repro` runs scan before ingest), then ingest again.")
    assert not params.paths.prepared.exists()
    assert _byol(tmp_path, "scan").returncode == 0 and _byol(tmp_path, "ingest").returncode == 0


def test_a_file_rewritten_in_place_after_the_scan_but_converted_before_keeps_its_listed_pixels(tmp_path):
    folder, params = _scanned_project(tmp_path)
    assert _byol(tmp_path, "ingest").returncode == 0
    listed = (params.paths.prepared / "card.json").read_bytes()
    shutil.rmtree(params.paths.prepared)
    Image.fromarray(np.zeros((20, 20, 3), dtype=np.uint8)).save(folder / "cat" / "003.png")
    assert _byol(tmp_path, "ingest").returncode == 0  # what the listing names: the cached conversion
    assert (params.paths.prepared / "card.json").read_bytes() == listed
    assert _byol(tmp_path, "scan").returncode == 0 and _byol(tmp_path, "ingest").returncode == 0
    assert (params.paths.prepared / "card.json").read_bytes() != listed  # the next scan saw it
