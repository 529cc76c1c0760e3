"""The scan's walk (byol_core/data/walk.py): worker processes walk exactly what one process
walks, a folder taken whole equals one walked file by file, and a worker's failure is either
raised with its message or made up for in the parent."""

from __future__ import annotations

import io
import os
import pickle
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from byol_core.data import scan
from byol_core.data import walk as walking
from byol_core.errors import ByolError


def _tree(root: Path) -> Path:
    """Top-level files between folders, names that sort before and after a folder's own name
    ("b" < "b.png" < "b0"), folders of plain files (taken whole) and of mixed entries, deep
    folders, dot-names, links, a FIFO, a name that is not UTF-8 and one that is not ASCII."""
    folder = root / "src"
    for rel in ["a.png", "b/1.png", "b/2.png", "b.png", "b0/x/y/z.png", "b0/x/y.png", "b0/x0.png", "c.png",
                "d/0.png", "d/é.png", "e/deep/er/1.png", "e/deep/2.png", "e/3.png", "e/.hidden.png",
                ".dot/1.png", "f/.dot/1.png", "f/0.png", "g/solo.png"]:
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(rel.encode() * 3)
    for i in range(40):
        (folder / "many" / f"{i:03d}.png").parent.mkdir(exist_ok=True)
        (folder / "many" / f"{i:03d}.png").write_bytes(b"x" * i)
    os.symlink("nowhere.png", folder / "e" / "dangling.png")
    os.symlink("3.png", folder / "e" / "link.png")
    os.symlink("../b", folder / "e" / "folder-link")
    os.mkfifo(folder / "e" / "pipe.png")
    with open(os.fsencode(folder / "f") + b"/caf\xe9.png", "wb") as handle:
        handle.write(b"latin-1")
    os.utime(folder / "many" / "007.png", ns=(1, 123_456_789_012))
    return folder


def _reference(folder: Path) -> list[tuple[str, int, int]]:
    """(path, size, mtime) as the listing defines it, by os.listdir and os.stat alone."""
    rows = []

    def visit(path: bytes, prefix: bytes) -> None:
        for name in sorted(n for n in os.listdir(path) if not n.startswith(b".")):
            full = os.path.join(path, name)
            info = os.lstat(full)
            if stat.S_ISDIR(info.st_mode):
                visit(full, prefix + name + b"/")
                continue
            if stat.S_ISLNK(info.st_mode):
                if not os.path.exists(full):
                    rows.append(((prefix + name).decode("utf-8", "backslashreplace"), -1, -1))
                    continue
                info = os.stat(full)
            if stat.S_ISREG(info.st_mode):
                rows.append(((prefix + name).decode("utf-8", "backslashreplace"), info.st_size, info.st_mtime_ns))

    visit(os.fsencode(folder), b"")
    return rows


def _rows(walked: scan.Walked) -> list[tuple[str, int, int]]:
    return list(zip(walked.paths.to_pylist(), walked.sizes.tolist(), walked.mtimes.tolist()))


def _same(a: scan.Walked, b: scan.Walked) -> None:
    assert _rows(a) == _rows(b)
    assert (a.odd, a.folder_links, a.folders) == (b.odd, b.folder_links, b.folders)
    assert a.paths_md5() == b.paths_md5()


def test_one_process_walks_what_the_listing_defines(tmp_path):
    folder = _tree(tmp_path)
    walked = scan.walk(folder, workers=1)
    assert _rows(walked) == _reference(folder)
    assert [row[0] for row in _rows(walked)][:6] == ["a.png", "b/1.png", "b/2.png", "b.png", "b0/x/y/z.png",
                                                    "b0/x/y.png"]
    assert walked.odd == {"f/caf\\xe9.png": "f/caf\udce9.png"} and walked.folder_links == 1
    assert ("many/007.png", 7, 123_456_789_012) in _rows(walked)
    assert [name for name, _ in walked.folders] == ["", "b", "b0", "b0/x", "b0/x/y", "d", "e", "e/deep",
                                                    "e/deep/er", "f", "g", "many"]


@pytest.mark.parametrize("workers", [2, 3])
def test_workers_walk_exactly_what_one_process_walks(tmp_path, monkeypatch, workers):
    folder = _tree(tmp_path)
    alone = scan.walk(folder, workers=1)
    monkeypatch.setattr(walking, "walk_entries", lambda *a: pytest.fail("walked in the parent, not in a worker"))
    _same(scan.walk(folder, workers=workers, parallel_from=0), alone)


def test_a_small_folder_takes_no_worker(tmp_path, monkeypatch):
    folder = _tree(tmp_path)
    monkeypatch.setattr(walking.subprocess, "Popen", lambda *a, **k: pytest.fail("started a worker"))
    assert _rows(scan.walk(folder, workers=2)) == _reference(folder)  # 60-odd names, under PARALLEL_FROM
    with pytest.raises(pytest.fail.Exception, match="started a worker"):
        scan.walk(folder, workers=2, parallel_from=40)  # "many" alone holds 40


def test_a_folder_taken_whole_equals_one_walked_file_by_file(tmp_path, monkeypatch):
    folder = _tree(tmp_path)
    whole = scan.walk(folder, workers=1)
    monkeypatch.setattr(walking, "_lstat_all", lambda fd, names: None)  # as if an lstat had failed
    _same(scan.walk(folder, workers=1), whole)


def test_a_workers_error_is_raised_with_its_message(tmp_path, monkeypatch):
    folder = _tree(tmp_path)
    answer = ("import pickle, sys; pickle.load(sys.stdin.buffer); "
              "pickle.dump(('error', 'b: cannot open it (Permission denied)'), sys.stdout.buffer); sys.stdout.flush()")
    monkeypatch.setattr(walking, "_WORKER", ["-c", answer])
    with pytest.raises(ByolError, match=r"^b: cannot open it \(Permission denied\)$"):
        scan.walk(folder, workers=2, parallel_from=0)


def test_a_task_whose_worker_died_is_walked_in_the_parent(tmp_path, monkeypatch):
    folder = _tree(tmp_path)
    alone = scan.walk(folder, workers=1)
    monkeypatch.setattr(walking, "_WORKER", ["-c", "import os; os._exit(9)"])
    _same(scan.walk(folder, workers=2, parallel_from=0), alone)


def test_a_worker_answers_each_task_and_stops_at_the_end_of_its_input(tmp_path):
    folder = _tree(tmp_path)
    tasks = io.BytesIO()
    for names in (["b"], ["many"], ["nothing-here"]):
        pickle.dump((os.fspath(folder), names), tasks)
    done = subprocess.run([sys.executable, *walking._WORKER, walking._PACKAGE_ROOT], input=tasks.getvalue(),
                          capture_output=True, timeout=60, check=True)
    answers = io.BytesIO(done.stdout)
    status, fields = pickle.load(answers)
    assert status == "ok" and bytes(fields[0]) == b"b/1.pngb/2.png"
    status, fields = pickle.load(answers)
    assert status == "ok" and len(fields[1]) == 40 and np.all(np.diff(np.frombuffer(fields[1], np.int64)) == 12)
    status, fields = pickle.load(answers)  # a name that is not there: nothing, no error
    assert status == "ok" and fields[0] == bytearray() and len(fields[1]) == 0
    with pytest.raises(EOFError):
        pickle.load(answers)


def test_a_worker_whose_parent_stopped_listening_exits_quietly(tmp_path):
    folder = _tree(tmp_path)
    worker = subprocess.Popen([sys.executable, *walking._WORKER, walking._PACKAGE_ROOT], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    worker.stdout.close()  # as a parent that was killed: the answer has nowhere to go
    pickle.dump((os.fspath(folder), ["many"]), worker.stdin)
    worker.stdin.close()
    assert worker.wait(timeout=60) == 0
    assert worker.stderr.read() == b""
