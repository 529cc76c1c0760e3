"""Atomic file writes and safe checkpoint loads.

Every output is written to a temporary name in the same directory and renamed into
place, so a crash or kill never leaves a half-written file under the final name.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from byol_core.errors import ByolError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _ensure_dir(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        blocking = next((p for p in (directory, *directory.parents) if p.exists() and not p.is_dir()), None)
        why = f"{blocking} is a file, not a folder" if blocking else exc.strerror
        raise ByolError(f"cannot create directory {directory}: {why}. "
                        "Check the path in params.yaml and its permissions.") from exc


def _write_temp(path: Path, write: Callable[[Path], None]) -> Path:
    """``write(tmp)`` on a temp file beside ``path``, fsynced; returns the temp file."""
    path = Path(path)
    _ensure_dir(path.parent)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise ByolError(f"cannot write {path}: {exc.strerror}. "
                        "Make the directory writable or point params.yaml elsewhere.") from exc
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file ordinary permissions
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temp file beside ``path``, fsync it, then rename it over ``path``."""
    tmp = _write_temp(path, write)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class Folder:
    """An output that is a whole folder: ``write(staging)`` fills a fresh folder, which then
    replaces the old one (see :func:`commit_files`)."""

    def __init__(self, write: Callable[[Path], None]):
        self.write = write


def _write_temp_dir(path: Path, folder: Folder) -> Path:
    staging = staging_dir(path)
    try:
        folder.write(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return staging


def commit_files(outputs: list[tuple[Path, Callable[[Path], None] | Folder]], journal: Path) -> None:
    """Write a stage's outputs so that they change together: all new, or all as they were.

    Each output is first written in full to a temp file beside it (a failure, a full disk
    or Ctrl-C here removes the temps and leaves every old output as it was). Then a journal
    listing the renames is written atomically: from that moment the new set is decided. The
    renames follow, and the journal goes. A run killed between the journal and the last
    rename is completed by :func:`recover` at the start of the stage's next run."""
    recover(journal)
    temps: list[tuple[Path, Path]] = []
    try:
        for final, write in outputs:
            made = _write_temp_dir(final, write) if isinstance(write, Folder) else _write_temp(final, write)
            temps.append((made, Path(final)))
        plan = [[str(tmp), str(final)] for tmp, final in temps]
        atomic_write(journal, lambda tmp: tmp.write_text(json.dumps(plan)))
    except BaseException:
        for tmp, _ in temps:
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
        raise
    _apply(journal)


class StageCommit:
    """A stage's outputs, which change together: at its start :meth:`recover` finishes a
    commit that a killed run left half done, and at its end :meth:`write` commits the new set
    (:func:`commit_files`). The journal is ``folder/.{stage}.commit``."""

    def __init__(self, stage: str, folder: Path) -> None:
        self.journal = Path(folder) / f".{stage}.commit"

    def recover(self) -> bool:
        return recover(self.journal)

    def write(self, outputs: list[tuple[Path, Callable[[Path], None] | Folder]]) -> None:
        commit_files(outputs, self.journal)


def recover(journal: Path) -> bool:
    """Finish a commit that a killed run left half done (see :func:`commit_files`)."""
    journal = Path(journal)
    if not journal.is_file():
        return False
    _apply(journal)
    return True


def _apply(journal: Path) -> None:
    blocked = {signal.SIGINT, signal.SIGTERM}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)  # the renames run to the end
    try:
        try:
            plan = json.loads(journal.read_text())
        except (OSError, ValueError):
            plan = []  # atomic_write never leaves a cut journal; an unreadable one holds nothing to do
        for tmp, final in plan:
            if Path(tmp).is_dir():  # a folder: the old one goes aside, and away once all are in place
                _swap_dir(Path(tmp), Path(final))
            elif Path(tmp).exists():
                os.replace(tmp, final)
        for _, final in plan:
            shutil.rmtree(_aside(Path(final)), ignore_errors=True)
        for folder in {Path(final).parent for _, final in plan}:
            _fsync_dir(folder)
        journal.unlink(missing_ok=True)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale_temps(path: Path) -> list[Path]:
    """Delete temp files that :func:`atomic_write` left beside ``path`` when its process was
    killed mid-write (``kill -9`` skips all cleanup). Call only when no other writer of
    ``path`` can be running. Returns what was removed."""
    path = Path(path)
    stale = sorted(path.parent.glob(f".{path.name}.*.tmp")) if path.parent.is_dir() else []
    for temp in stale:
        temp.unlink(missing_ok=True)
    return stale


def text_writer(text: str) -> Callable[[Path], None]:
    return lambda tmp: tmp.write_text(text)


def json_writer(obj: Any) -> Callable[[Path], None]:
    return text_writer(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_text(path: Path, text: str) -> None:
    atomic_write(path, text_writer(text))


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, json_writer(obj))


def torch_writer(obj: Any) -> Callable[[Path], None]:
    """Write ``obj`` with ``torch.save`` so that equal contents give equal bytes.

    Given a path, ``torch.save`` names the zip archive's records after the file (here the
    random temp name), so every save of the same tensors would differ and DVC would rerun
    every stage after it. Given an open file it names them ``archive/`` always; it streams
    to the file all the same, so a large state is never held twice in memory."""
    import torch  # here, not at the top: ingest writes no checkpoints and stays light without torch

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            torch.save(obj, handle)

    return write


def save_torch(path: Path, obj: Any) -> None:
    atomic_write(path, torch_writer(obj))


def load_torch(path: Path, what: str, fix: str) -> Any:
    """Load a checkpoint with ``weights_only=True`` (tensors and plain containers only).

    A missing, truncated, corrupt or code-carrying file becomes a ``ByolError`` that
    names the file, says what it should have been (``what``) and how to fix it (``fix``).
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise ByolError(f"{what} not found at {path}. {fix}")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before refusing
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for bad files
        raise ByolError(f"{path} is not a readable {what} ({_load_failure(exc)}). {fix}") from exc


def _load_failure(exc: Exception) -> str:
    """A short reason, without torch's advice to retry with ``weights_only=False``."""
    text = str(exc).strip()
    if "Weights only load failed" in text:
        return ("it holds Python objects beyond tensors and plain containers, which could run code when "
                "loaded, so it is refused")
    first = text.splitlines()[0] if text else type(exc).__name__
    return first.split(". This is an internal miniz error")[0]


def replace_dir(staging: Path, final: Path, marker: str) -> None:
    """Move a fully written ``staging`` directory to ``final``, replacing any old one.

    The old directory is renamed aside first and removed only after the new one is in
    place, so ``final`` is at every moment either the complete old or the complete new tree.
    An existing ``final`` is only replaced if it holds ``marker`` (it is one of ours), so a
    mistyped path never deletes someone's folder.
    """
    final = Path(final)
    if final.exists() and not (final / marker).exists():
        raise ByolError(f"refusing to replace {final}: it exists but has no {marker}, so it was not written "
                        "by this stage. Point the path at a new folder, or remove that folder yourself.")
    _swap_dir(Path(staging), final)
    shutil.rmtree(_aside(final), ignore_errors=True)


def _aside(final: Path) -> Path:
    """Where :func:`_swap_dir` puts the old ``final`` until the new one is in place."""
    return final.with_name(f".{final.name}.old")


def _swap_dir(new: Path, final: Path) -> None:
    """Rename the folder ``new`` to ``final``, the old ``final`` first renamed aside (to
    :func:`_aside`, where the caller removes it), so that ``final`` is at every moment the
    complete old or the complete new tree."""
    old = _aside(final)
    shutil.rmtree(old, ignore_errors=True)  # left by a swap that was killed before it removed it
    if final.exists():
        os.replace(final, old)
    os.replace(new, final)


def staging_dir(final: Path) -> Path:
    """A fresh empty directory beside ``final`` to build its replacement in."""
    final = Path(final)
    _ensure_dir(final.parent)
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes 0700
        return staging
    except OSError as exc:
        raise ByolError(f"cannot write under {final.parent}: {exc.strerror}. "
                        "Make it writable or point params.yaml elsewhere.") from exc
