"""The walk under a scan: every file below a folder with its size and mtime, as flat buffers.

A million ``lstat`` calls are most of what a scan of a million files costs (about 4 µs each in
the kernel here, against 0.5 µs a name to list them), and one process makes them one at a time:
threads do not help, as each call gives up and takes back the GIL. So on a machine with more
than one core, a large folder's top-level entries are walked by that many worker processes,
each taking the next entry in order as it finishes one, and the parts are joined in listing
order: the result is the one walk's, byte for byte.

This module imports nothing but the standard library and ``byol_core.errors``, so that a
worker is a bare interpreter (``python -S``) that starts in a few milliseconds; it speaks
pickle over its stdin and stdout (:func:`serve`).
"""

from __future__ import annotations

import os
import pickle
import selectors
import signal
import stat
import subprocess
import sys
from array import array
from dataclasses import dataclass, field
from functools import partial
from itertools import accumulate, filterfalse, islice, repeat
from operator import add, attrgetter, methodcaller
from pathlib import Path

from byol_core.errors import ByolError, printable

PARALLEL_FROM = 20_000  # names in the first top-level folders before the walk takes workers
_PACKAGE_ROOT = os.fspath(Path(__file__).resolve().parents[2])
# A worker: the folder holding byol_core on sys.path, no site-packages, then serve().
_WORKER = ["-S", "-c", "import sys; sys.path.insert(0, sys.argv[1]); from byol_core.data.walk import serve; serve()"]


@dataclass
class Part:
    """Files in listing order: their paths' UTF-8 bytes back to back (``names``, each ending at
    ``ends``), ``sizes`` and ``mtimes`` (-1 for a link to nothing); ``odd``: the names that are
    not UTF-8, shown form -> real path; symlinked folders passed over; every folder walked
    (path below the root, its mtime in ns taken before it was listed)."""

    names: bytearray = field(default_factory=bytearray)
    ends: array = field(default_factory=lambda: array("q"))
    sizes: array = field(default_factory=lambda: array("q"))
    mtimes: array = field(default_factory=lambda: array("q"))
    odd: dict[str, str] = field(default_factory=dict)
    folder_links: int = 0
    folders: list[tuple[str, int]] = field(default_factory=list)


def open_folder(name: str, dir_fd: int | None, shown: str) -> tuple[int, list[str], int]:
    """(an fd of the folder, its entries but dot-names, sorted by name; its mtime in ns, taken
    before it is listed)."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=dir_fd)
    except OSError as exc:
        raise ByolError(f"{printable(shown)}: cannot open it ({exc.strerror}). Make it readable, or move it out of "
                        "data.source_dir.") from None
    try:
        mtime = os.fstat(fd).st_mtime_ns
        listed = os.listdir(fd)
        if "\0." in "\0" + "\0".join(listed):  # a name cannot hold a NUL: this asks if one starts with "."
            listed = list(filterfalse(methodcaller("startswith", "."), listed))
        listed.sort()
        return fd, listed, mtime
    except OSError as exc:
        os.close(fd)
        raise ByolError(f"{printable(shown)}: cannot list it ({exc.strerror}). Make it readable, or move it out of "
                        "data.source_dir.") from None


def _lstat_all(fd: int, names: list[str]) -> list[os.stat_result] | None:
    """Every name's ``lstat`` in one pass (no Python frame per name), None if one failed."""
    try:
        return list(map(partial(os.stat, dir_fd=fd, follow_symlinks=False), names))
    except OSError:
        return None


def walk_entries(folder: str, entries: list[str]) -> Part:
    """The files at and below ``entries`` (names in ``folder``, sorted), in
    listing order: a folder's entries by name, a subfolder's files at its place. One ``lstat``
    per entry, relative to its folder's fd (a second ``stat`` for a symlink, to follow it); a
    folder of regular files only (the common case) is taken whole, without a Python step per
    file."""
    part = Part()
    names, ends, sizes, mtimes, odd = part.names, part.ends, part.sizes, part.mtimes, part.odd
    try:
        root = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise ByolError(f"{printable(folder)}: cannot open it ({exc.strerror}). Make it readable.") from None
    frames = [[root, entries, None, 0, ""]]  # depth first: fd, names in order, their lstat, next, prefix
    try:
        while frames:
            frame = frames[-1]
            fd, listed, infos, at, prefix = frame
            if at == 0 and infos is None:
                frame[2] = infos = _lstat_all(fd, listed)
                if infos is not None and all(map(stat.S_ISREG, map(attrgetter("st_mode"), infos))):
                    joined = prefix.join(["", *listed])
                    if joined.isascii():  # one character, one byte: the ends are the lengths
                        step = len(prefix)
                        ends.extend(islice(accumulate(map(add, map(len, listed), repeat(step)),
                                                      initial=len(names)), 1, None))
                        names += joined.encode()
                        sizes.extend(map(attrgetter("st_size"), infos))
                        mtimes.extend(map(attrgetter("st_mtime_ns"), infos))
                        os.close(frames.pop()[0])
                        continue
            while at < len(listed):
                name = listed[at]
                at += 1
                try:
                    info = infos[at - 1] if infos is not None else os.stat(name, dir_fd=fd, follow_symlinks=False)
                    if stat.S_ISDIR(info.st_mode):
                        sub, below, mtime = open_folder(name, fd, f"{folder}/{prefix}{name}")
                        frame[3] = at
                        frames.append([sub, below, None, 0, f"{prefix}{name}/"])
                        part.folders.append((f"{prefix}{name}", mtime))
                        break
                    if stat.S_ISLNK(info.st_mode):  # a link to a file is followed; to a folder, not
                        info = os.stat(name, dir_fd=fd)
                        part.folder_links += stat.S_ISDIR(info.st_mode)
                    if not stat.S_ISREG(info.st_mode):
                        continue  # a FIFO, socket or device, or a link to a folder
                    size, mtime = info.st_size, info.st_mtime_ns
                except FileNotFoundError:
                    if not os.path.islink(f"{folder}/{prefix}{name}"):
                        continue  # removed since its folder was listed
                    size = mtime = -1  # a link to nothing: listed, so that ingest reports it
                except OSError:
                    size = mtime = -1  # a link that loops, say: listed, as above
                relative = prefix + name
                if not relative.isascii():
                    shown = printable(relative)
                    if shown != relative:
                        odd[shown] = relative
                        relative = shown
                names += relative.encode()
                ends.append(len(names))
                sizes.append(size)
                mtimes.append(mtime)
            else:
                os.close(frames.pop()[0])
    finally:
        for frame in frames:
            os.close(frame[0])
    return part


def walk(folder: str, workers: int | None = None, parallel_from: int = PARALLEL_FROM) -> tuple[int, list[Part]]:
    """(the mtime of ``folder``, every file below it as parts in listing order). With two or
    more ``workers`` (default: the cores this process may use) and at least ``parallel_from``
    names in the first top-level folders, each top-level folder (and each run of top-level
    files between them) is walked by the next free worker process."""
    fd, entries, mtime = open_folder(folder, None, folder)
    workers = len(os.sched_getaffinity(0)) if workers is None else workers
    try:
        tasks = _tasks(fd, entries) if workers >= 2 else []
        workers = min(workers, sum(kind == "folder" for kind, _ in tasks))
        big = workers >= 2 and _at_least(fd, tasks, parallel_from)
    finally:
        os.close(fd)
    if not big:
        return mtime, [walk_entries(folder, entries)]
    return mtime, _in_workers(folder, [names for _, names in tasks], workers)


def _tasks(fd: int, entries: list[str]) -> list[tuple[str, list[str]]]:
    """The top-level entries (sorted) as tasks in listing order: each folder alone, each run of
    other entries together. Folders are told by the listing's entry type (no ``lstat`` on most
    file systems), so a flat folder of a million files is not stat-ed twice."""
    with os.scandir(fd) as listed:
        folders = {entry.name for entry in listed if _is_folder(entry)}
    tasks: list[tuple[str, list[str]]] = []
    for name in entries:
        kind = "folder" if name in folders else "files"
        if kind == "files" and tasks and tasks[-1][0] == "files":
            tasks[-1][1].append(name)
        else:
            tasks.append((kind, [name]))
    return tasks


def _is_folder(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False  # gone, say: the walk says what it is


def _at_least(fd: int, tasks: list[tuple[str, list[str]]], count: int) -> bool:
    """Whether the top-level folders, listed in order until ``count`` is reached, hold at least
    ``count`` names (one ``listdir`` of a large folder, about 50 ms a 100,000 names)."""
    seen = 0
    for kind, names in tasks:
        if kind == "folder":
            try:
                sub = os.open(names[0], os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            except OSError:
                continue
            try:
                seen += len(os.listdir(sub))
            except OSError:
                pass
            finally:
                os.close(sub)
            if seen >= count:
                return True
    return False


def _in_workers(folder: str, tasks: list[list[str]], workers: int) -> list[Part]:
    """Each task walked by the next free worker; the parts in task order. A worker's
    ByolError is raised here (the first task's, in order, when several failed); the tasks of a
    worker that died are walked here."""
    procs = []
    try:
        for _ in range(workers):
            procs.append(subprocess.Popen([sys.executable, *_WORKER, _PACKAGE_ROOT], stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE))
    except OSError:  # no process to be had (a limit, say): what started does the work, or this one
        if not procs:
            return [walk_entries(folder, task) for task in tasks]
    parts: list[Part | None] = [None] * len(tasks)
    errors: dict[int, str] = {}
    todo = iter(range(len(tasks)))
    busy: dict[subprocess.Popen, int] = {}
    chooser = selectors.DefaultSelector()

    def give(proc: subprocess.Popen) -> None:
        for index in todo:
            try:
                pickle.dump((folder, tasks[index]), proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
                proc.stdin.flush()
            except OSError:  # the worker is gone: this task is walked here at the end
                return
            busy[proc] = index
            chooser.register(proc.stdout, selectors.EVENT_READ, proc)
            return

    try:
        for proc in procs:
            give(proc)
        while busy:
            for key, _ in chooser.select():
                proc = key.data
                chooser.unregister(proc.stdout)
                index = busy.pop(proc)
                try:
                    status, value = pickle.load(proc.stdout)
                except (EOFError, pickle.UnpicklingError, OSError):
                    continue  # the worker died: its task is walked here at the end, and it gets no other
                if status == "ok":
                    parts[index] = Part(*value)
                else:
                    errors[index] = value
                give(proc)
    finally:
        chooser.close()
        for proc in procs:
            try:
                proc.stdin.close()
            except OSError:
                pass
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            proc.stdout.close()
    if errors:
        raise ByolError(errors[min(errors)])
    # the tasks no worker was left to take (all died): walked here
    return [part if part is not None else walk_entries(folder, tasks[index]) for index, part in enumerate(parts)]


def serve() -> None:
    """A worker: read (folder, entries) tasks from stdin until it closes, and answer each with
    ("ok", the part's fields) or ("error", a ByolError's message). Interrupts are the parent's
    to handle: it closes this worker's stdin."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    reader, writer = sys.stdin.buffer, sys.stdout.buffer
    while True:
        try:
            folder, entries = pickle.load(reader)
        except EOFError:
            return
        try:
            part = walk_entries(folder, entries)
            answer = ("ok", (part.names, part.ends, part.sizes, part.mtimes, part.odd, part.folder_links,
                             part.folders))
        except ByolError as exc:
            answer = ("error", str(exc))
        try:
            pickle.dump(answer, writer, protocol=pickle.HIGHEST_PROTOCOL)
            writer.flush()
        except BrokenPipeError:  # the parent is gone (stopped, killed): nobody to answer, nothing to flush
            os._exit(0)
