"""Failures end cleanly: outputs change together or not at all, system errors and bugs
become one-line messages (exit 1, no traceback), SIGTERM cleans up, one pretrain at a time,
and files that could hang or confuse a reader (FIFOs, symlink loops, names that are not
UTF-8) are handled."""

import contextlib
import csv
import errno
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import byol_core.io.storage as storage
from byol_core import stages
from byol_core.cli import main
from byol_core.config import load_params
from byol_core.stages.evaluate import _predictions_csv
from conftest import write_params
from test_bad_input import BASE, _healthy_project, _snapshot


def _files(*paths):
    return [Path(p).read_text() if Path(p).exists() else None for p in paths]


def test_a_commit_that_fails_part_way_changes_nothing(tmp_path):
    a, b, c = (tmp_path / "models" / "a.txt", tmp_path / "metrics" / "b.json", tmp_path / "metrics" / "c.csv")
    storage.commit_files([(a, storage.text_writer("old a")), (b, storage.text_writer("old b")),
                          (c, storage.text_writer("old c"))], tmp_path / "models" / ".x.commit")

    def disk_full(tmp):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp))

    with pytest.raises(OSError):
        storage.commit_files([(a, storage.text_writer("new a")), (b, storage.text_writer("new b")), (c, disk_full)],
                             tmp_path / "models" / ".x.commit")
    assert _files(a, b, c) == ["old a", "old b", "old c"]
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.txt", "b.json", "c.csv", "metrics", "models"]


def test_a_commit_killed_between_renames_is_completed_by_the_next_run(tmp_path, monkeypatch):
    a, b = tmp_path / "a.txt", tmp_path / "sub" / "b.txt"
    journal = tmp_path / ".stage.commit"
    storage.commit_files([(a, storage.text_writer("old a")), (b, storage.text_writer("old b"))], journal)
    real, calls = os.replace, []

    def dies_on_the_second_rename(src, dst):
        calls.append(dst)
        if len(calls) == 3:  # 1: the journal; 2: a; 3: b
            raise KeyboardInterrupt("killed")
        return real(src, dst)

    monkeypatch.setattr(storage.os, "replace", dies_on_the_second_rename)
    with pytest.raises(KeyboardInterrupt):
        storage.commit_files([(a, storage.text_writer("new a")), (b, storage.text_writer("new b"))], journal)
    monkeypatch.setattr(storage.os, "replace", real)
    assert _files(a, b) == ["new a", "old b"] and journal.exists()  # as a kill -9 would leave it
    assert storage.recover(journal)
    assert _files(a, b) == ["new a", "new b"] and not journal.exists()
    assert not list(tmp_path.rglob("*.tmp"))


def _run(argv):
    with contextlib.redirect_stderr(io.StringIO()) as err:
        code = main(argv)
    return code, err.getvalue()


def test_a_full_disk_is_a_clean_error_and_changes_nothing(tmp_path, monkeypatch):
    root = _healthy_project(tmp_path / "project")
    before = _snapshot(root)

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(storage.os, "fsync", no_space)
    code, err = _run(["evaluate", "--params", str(root / "params.yaml")])
    assert code == 1 and "Traceback" not in err
    # The progress lines come first; the error is the last line.
    assert err.splitlines()[-1].startswith("byol evaluate: error: No space left on device") and "The disk is full" in err
    assert _snapshot(root) == before


def test_an_unexpected_error_is_one_line_and_a_log(tmp_path, monkeypatch):
    params = write_params(tmp_path, BASE)
    monkeypatch.chdir(tmp_path)

    def bug(name, params):
        return 1 / 0

    monkeypatch.setattr(stages, "run", bug)
    code, err = _run(["ingest", "--params", str(params)])
    assert code == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert err.startswith("byol ingest: error: internal error (ZeroDivisionError: division by zero). This is a bug")
    log = Path(err.split("The full traceback is in ")[1].strip().rstrip("."))
    assert log.is_file() and "ZeroDivisionError" in log.read_text() and "Traceback" in log.read_text()


@pytest.mark.parametrize("signum, code, word", [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")])
def test_a_stop_signal_during_an_import_is_reported_as_the_stop(tmp_path, monkeypatch, signum, code, word):
    """A signal that lands while a C extension imports comes out as another exception:
    numpy's import_array prints it (PyErr_Print, through sys.excepthook) and raises
    ImportError("import numpy failed"), as onnxruntime's import does when SIGTERM hits it.
    The run still ends as stopped, with no traceback; the next run is not taken for one."""
    import importlib

    (tmp_path / "slow_extension.py").write_text(
        "import signal, sys\n"
        "try:\n"
        f"    signal.raise_signal({int(signum)})  # the handler's exception is raised here, mid-import\n"
        "except BaseException:\n"
        "    sys.excepthook(*sys.exc_info())  # what PyErr_Print does\n"
        "    raise ImportError('import numpy failed') from None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)  # the bug's log goes under .byol/logs here
    params = write_params(tmp_path, BASE)
    # As in a terminal: a suite started in the background inherits SIGINT ignored, which the CLI
    # rightly leaves so (Ctrl-C does not stop a background job).
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        monkeypatch.setattr(stages, "run", lambda stage, params: importlib.import_module("slow_extension"))
        stderr, handlers = io.StringIO(), (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT), sys.excepthook)
        with contextlib.redirect_stderr(stderr):
            assert main(["export", "--params", str(params)]) == code
        assert stderr.getvalue() == f"byol export: {word}; nothing was changed\n"
        assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT), sys.excepthook) == handlers

        def bug(stage, params):
            raise ImportError("a real one")

        monkeypatch.setattr(stages, "run", bug)
        code, err = _run(["export", "--params", str(params)])
        assert code == 1 and "internal error (ImportError: a real one)" in err
    finally:
        signal.signal(signal.SIGINT, previous_int)


def test_a_second_pretrain_in_the_project_is_refused_with_the_holders_pid(tmp_path):
    root = _healthy_project(tmp_path / "project")
    params = load_params(root / "params.yaml")
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom byol_core.io import locks\n"
        f"with locks.held({str(params.paths.resume)!r}, 'x'):\n    print('held', flush=True)\n    time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        code, err = _run(["pretrain", "--params", str(root / "params.yaml")])
    finally:
        holder.kill()
        holder.wait()
    assert code == 1
    assert f"byol pretrain is already running in this project (pid {holder.pid})" in err


def _image_folder(root: Path, per_class: int) -> None:
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(root / name / f"{i:05d}.png")


def _folder_params(tmp_path: Path) -> Path:
    return write_params(tmp_path, {**BASE, "data.source": "imagefolder", "data.source_dir": "src",
                                   "data.image_size": 16, "data.test_fraction": 0.25})


def test_sigterm_during_ingest_leaves_nothing_half_written(tmp_path):
    _image_folder(tmp_path / "src", 3000)
    params = _folder_params(tmp_path)
    process = subprocess.Popen([sys.executable, "-m", "byol_core.cli", "ingest", "--params", str(params)],
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list((tmp_path / "data").glob(".prepared.*.tmp")) and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143, err
    assert "byol ingest: terminated; nothing was changed" in err and "Traceback" not in err
    assert not (tmp_path / "data" / "prepared").exists()
    assert [p.name for p in (tmp_path / "data").iterdir()] == []


def test_fifos_and_names_that_are_not_utf8(tmp_path):
    _image_folder(tmp_path / "src", 8)
    os.mkfifo(tmp_path / "src" / "a" / "pipe.png")  # opening it would block forever
    odd = os.fsencode(tmp_path / "src" / "b") + b"/caf\xe9.png"  # Latin-1, not UTF-8
    Image.new("RGB", (20, 20), (200, 10, 10)).save(odd.decode("utf-8", "surrogateescape"))
    params = _folder_params(tmp_path)
    done = subprocess.run([sys.executable, "-m", "byol_core.cli", "ingest", "--params", str(params)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    sources = pd.read_parquet(tmp_path / "data" / "prepared" / "manifest.parquet").source.tolist()
    assert len(sources) == 17 and "b/caf\\xe9.png" in sources
    assert not any("pipe" in s for s in sources)


def test_class_names_with_commas_and_quotes_survive_the_predictions_csv():
    classes = ["plain", 'say "hi"', "a, b", "line\nbreak"]
    text = _predictions_csv(classes, np.array([0, 1, 2, 3]), np.array([3, 2, 1, 0]))
    rows = list(csv.reader(io.StringIO(text)))
    assert rows == [["actual", "predicted"], ["plain", "line\nbreak"], ['say "hi"', "a, b"], ["a, b", 'say "hi"'],
                    ["line\nbreak", "plain"]]


def test_cells_that_a_spreadsheet_would_run_are_written_as_text_in_every_csv():
    """A class folder named like a formula (=, +, -, @, tab, CR first) is written with a
    leading single quote (OWASP's advice against CSV injection); numbers, negative ones too,
    and other text are written as they are."""
    from byol_core import csvfile
    from byol_core.stages.pretrain import _curve_csv

    classes = ["=1+2", "+cmd", "-x", "@SUM(A1)", "\tt", "\rr", "-1.5", "plain", "a=b"]
    text = _predictions_csv(classes, np.arange(9), np.arange(9)[::-1])
    rows = list(csv.reader(io.StringIO(text)))
    assert [r[0] for r in rows[1:]] == ["'=1+2", "'+cmd", "'-x", "'@SUM(A1)", "'\tt", "'\rr", "-1.5", "plain", "a=b"]
    assert rows[1][1] == "a=b" and rows[9][1] == "'=1+2"
    curve = list(csv.reader(io.StringIO(_curve_csv([{"epoch": 1, "loss": -0.25, "note": "=run()"}]))))
    assert curve == [["epoch", "loss", "note"], ["1", "-0.25", "'=run()"]]
    # every CSV writer in byol_core goes through csvfile
    root = Path(csvfile.__file__).parent
    raw = [str(p.relative_to(root)) for p in root.rglob("*.py") if p.name != "csvfile.py"
           and any(w in p.read_text() for w in ("csv.writer", "csv.DictWriter", "to_csv("))]
    assert raw == []


def test_a_non_square_array_source_is_refused(tmp_path):
    from conftest import write_idx
    from byol_core.data.sources.fashion_mnist import FILES

    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 20), ("test", 5)):
        write_idx(src / FILES[split][0], rng.integers(0, 256, (n, 28, 20)))
        write_idx(src / FILES[split][1], rng.integers(0, 10, n))
    code, err = _run(["ingest", "--params", str(write_params(tmp_path, {**BASE, "data.source_dir": "src"}))])
    assert code == 1 and "images are 28x20 px, not square" in err and "Set data.image_size" in err


def test_yaml_aliases_are_refused_before_they_can_expand(tmp_path):
    """A "billion laughs" params file: nine levels of aliases, 9**9 values once expanded."""
    lines = ["l0: &l0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9)]
    params = tmp_path / "params.yaml"
    params.write_text("\n".join(lines) + "\n" + (Path(__file__).parents[1] / "params.yaml").read_text())
    started = time.monotonic()
    code, err = _run(["ingest", "--params", str(params)])
    assert code == 1 and "uses a YAML alias (*name): write the value out instead" in err
    assert time.monotonic() - started < 10
