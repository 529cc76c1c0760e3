"""How every benchmark records its results: one JSON file in benchmarks/results/ holding the
figures together with what they were measured on (machine, date, commit, software), so a
figure in RESULTS.md can always be traced to a record.

    from record import write_results
    path, record = write_results("onnx_inference", {"results": rows}, software=("onnxruntime",))
"""

from __future__ import annotations

import datetime
import importlib
import json
import os
import platform
import subprocess
import sys
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_mib() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _gpu_name(device) -> str | None:
    if getattr(device, "type", None) != "cuda":
        return None
    import torch

    return torch.cuda.get_device_name(device)


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _version(name: str) -> str | None:
    """The module's ``__version__`` (torch's names its CUDA build; onnxruntime comes as the
    onnxruntime-gpu distribution), else the distribution's version; None if not installed."""
    try:
        version = getattr(importlib.import_module(name.replace("-", "_")), "__version__", None)
    except ImportError:
        version = None
    try:
        return version or metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def write_results(benchmark: str, figures: dict, *, device=None, software: Iterable[str] = (),
                  tag: str | None = None, path: Path | None = None, out: Path = RESULTS) -> tuple[Path, dict]:
    """Write ``figures`` under a header (benchmark, date, machine, git commit and whether the
    checkout differed from it, the versions of ``software``, the command line) to
    ``out/<benchmark>[-<tag>]-<time>.json``, atomically. ``device``: the torch device measured
    (its GPU is named). ``path``: rewrite that record instead (a long benchmark saves what it
    has as it goes). Returns the path and the whole record."""
    now = datetime.datetime.now().astimezone()
    if path is None:
        path = Path(out) / f"{benchmark}{f'-{tag}' if tag else ''}-{now:%Y%m%dT%H%M%S}.json"
    if os.environ.get("BYOL_COMMIT"):
        # A copy of the tree on a lent GPU machine: its .git, if any, may not be the tree's.
        head, status = os.environ["BYOL_COMMIT"], None
    else:
        head = _git("rev-parse", "--short", "HEAD")
        status = _git("status", "--porcelain", "--untracked-files=no") if head else None
    record = {
        "benchmark": benchmark,
        "date": now.isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_name(), "cores": len(os.sched_getaffinity(0)), "cpu_count": os.cpu_count(),
                    "ram_total_mib": _ram_mib(), "gpu": _gpu_name(device), "platform": platform.platform()},
        "git": {"commit": head, "dirty": None if status is None else bool(status)},
        "software": {"python": platform.python_version(), **{name: _version(name) for name in software}},
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        **figures,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)
    return path, record
