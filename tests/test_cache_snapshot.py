"""The conversion cache's lookup through its Parquet snapshot: it must answer exactly what the
SQLite index says, whatever the snapshot's age, and survive losing or garbling the snapshot."""

import contextlib
import sqlite3

import numpy as np
import pyarrow.parquet as pq
import pytest

from byol_core.data.cache import BAD, OK, UNKNOWN, SNAPSHOT, ConversionCache


def _image(i):
    return np.full((1, 4, 4), i % 251, dtype=np.uint8)


def _fill(cache, entries):
    """entries: (path, size, mtime, good?)"""
    cache.add(((p, s, m), _image(k) if good else None, "" if good else "decode", "" if good else f"bad {p}")
              for k, (p, s, m, good) in enumerate(entries))


def _answer(found):
    return (found.status.tolist(), found.where.tolist(), found.digests.tolist(), dict(found.problems),
            found.lost.tolist())


def _sqlite_only(root, listing):
    """The same lookup with no snapshot to start from: every row comes from SQLite."""
    (root / "images-1x4-v1" / SNAPSHOT).unlink(missing_ok=True)
    cache = ConversionCache(root, 1, 4)
    try:
        return _answer(cache.lookup(listing))
    finally:
        cache.close()


def test_the_snapshot_answers_what_sqlite_says_as_rows_change_between_ingests(tmp_path):
    rng = np.random.default_rng(0)
    names = [f"c{k % 3}/{k:04d}.png" for k in range(300)] + ["odd/\udcff.png"]  # a name that is not UTF-8
    first = [(p, 100 + i, 10**18 + i, rng.random() > 0.1) for i, p in enumerate(names[:200])]
    cache = ConversionCache(tmp_path, 1, 4)
    _fill(cache, first)
    cache.lookup([first[0][:3]])
    cache.close()
    assert (tmp_path / "images-1x4-v1" / SNAPSHOT).is_file()

    # another ingest, after the snapshot was written: new files, and rows replaced (a file
    # converted again under a new mtime, a bad file that now converts)
    second = [(p, 7, 5, True) for p in names[200:]] + [(first[3][0], first[3][1], 99, True),
                                                       (first[5][0], first[5][1], first[5][2], True)]
    other = ConversionCache(tmp_path, 1, 4)
    _fill(other, second)
    other.close()

    listing = [(p, s, m) for p, s, m, _ in first[:150]] + [(p, s, m) for p, s, m, _ in second] + \
              [(first[160][0], first[160][1] + 1, first[160][2]), ("never/seen.png", 1, 1)]
    rng.shuffle(listing)
    listing = [tuple(x) for x in listing]
    cache = ConversionCache(tmp_path, 1, 4)
    got = _answer(cache.lookup(listing))
    cache.close()
    folder = tmp_path / "images-1x4-v1"
    with contextlib.closing(sqlite3.connect(folder / "index.sqlite")) as db:
        (rows,) = db.execute("SELECT count(*) FROM files").fetchone()
    assert pq.read_table(folder / SNAPSHOT).num_rows == rows == 301  # one row a file: replaced ones once
    want = _sqlite_only(tmp_path, listing)
    assert got == want
    status = dict(zip((p for p, _, _ in listing), got[0]))
    assert status["never/seen.png"] == UNKNOWN and status[first[160][0]] == UNKNOWN  # size differs
    assert status[first[3][0]] == UNKNOWN  # listed with its old mtime: the row now holds the new one
    assert status[first[5][0]] == OK  # the newer row replaced the bad one
    assert {OK, BAD} <= set(got[0])


@pytest.mark.parametrize("garble", [b"", b"not parquet", None])
def test_a_lost_or_garbled_snapshot_is_built_again_from_sqlite(tmp_path, garble):
    entries = [(f"a/{k}.png", 10, k, k % 7 != 0) for k in range(50)]
    cache = ConversionCache(tmp_path, 1, 4)
    _fill(cache, entries)
    listing = [(p, s, m) for p, s, m, _ in entries]
    want = _answer(cache.lookup(listing))
    cache.close()
    snapshot = tmp_path / "images-1x4-v1" / SNAPSHOT
    if garble is None:
        snapshot.unlink()
    else:
        snapshot.write_bytes(garble)
    cache = ConversionCache(tmp_path, 1, 4)
    assert _answer(cache.lookup(listing)) == want
    cache.close()
    assert snapshot.stat().st_size > 100  # written afresh
    assert want[0].count(OK) == 42 and want[0].count(BAD) == 8


def test_a_lookup_in_one_ingest_sees_its_own_conversions(tmp_path):
    cache = ConversionCache(tmp_path, 1, 4)
    listing = [(f"x/{k}.png", 3, k) for k in range(20)]
    assert set(cache.lookup(listing).status.tolist()) == {UNKNOWN}
    _fill(cache, [(p, s, m, True) for p, s, m in listing[:12]])
    found = cache.lookup(listing)
    assert found.status.tolist() == [OK] * 12 + [UNKNOWN] * 8
    assert found.where[:12, 1].tolist() == list(range(12))
    cache.close()


def test_files_are_placed_in_the_order_python_sorts_their_paths():
    from byol_core.data.filesplit import _by_path

    rng = np.random.default_rng(1)
    alphabet = list("ab-_/.Zé中0")
    paths = ["".join(rng.choice(alphabet, size=rng.integers(1, 9))) + f"{k}" for k in range(2000)]
    files = [(p, 1, 1) for p in paths]
    rows = rng.permutation(len(files))[:1500]
    assert [files[i][0] for i in _by_path(files, rows)] == sorted(files[i][0] for i in rows)
    files.append(("odd/\udcff.png", 1, 1))  # not UTF-8: sorted by Python itself
    rows = np.arange(len(files))[::-1]
    assert [files[i][0] for i in _by_path(files, rows)] == sorted(f[0] for f in files)
