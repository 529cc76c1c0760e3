"""Scale benchmark: how ingest, pretrain and evaluate grow with the number of images.

For each size N it builds a throw-away project around a synthetic image folder
(benchmarks/synthetic.py: class-structured RGB images, --px square) with a CPU-sized model,
and runs each stage as its own `byol` process, measuring:

  ingest       a full ingest: wall time, images/s, peak RSS.
  incremental  1% new files (at least one) added, ingest again: wall time and its ratio to
               the full ingest (the conversion cache converts only the new files). Then the
               cache and the prepared folder are deleted and ingest runs from scratch: its
               data_hash must equal the incremental one (recorded as a boolean, and whether
               every prepared file came out byte for byte the same).
  dvc push     what `dvc push` sends after that update: the bytes of prepared files whose
               md5 is new, against the folder's total. With --dvc-push also the real thing:
               git + dvc init, a local remote, `dvc add` + `dvc push` before and after the
               update, and the remote's growth in bytes. (Shards end on average every
               data.shard_mb / 2: below that a split is one shard, rewritten by any new file;
               --shard-mb sets a smaller size to see the behaviour of large data on small.)
  pretrain     N <= --pretrain-max: one epoch, twice: streamed from the shards
               (pretrain.resident_max_mb 0) and resident in memory (a huge resident_max_mb):
               wall time, images/s (metrics/pretrain.json), peak RSS. Larger N, with
               --pretrain-seconds S: streamed, killed after S seconds; its peak RSS is that
               of the first S seconds only (labelled so).
  evaluate     N <= --evaluate-max (and a finished pretrain): wall time, peak RSS.

With --dvc-scan, each size measures the source listing and what DVC and Dagster pay for a
big source folder instead (no pretrain or evaluate), in a git + DVC project with the
project's dvc.yaml, .dvcignore and byol_core (the images in data/raw/images, which
.dvcignore keeps out of DVC's walk):

  scan         `byol scan` cold (every file read), then warm (nothing changed: none read).
  ingest       `byol ingest` alone (full, cold conversion cache; its check of the folder
               against the listing included).
  dvc repro    with the prepared folder and the conversion cache deleted: `dvc repro ingest`
               (scan, then a full ingest) against `byol ingest` alone; then with nothing
               changed (the no-op: the scan runs, ingest is skipped) and `dvc status ingest`.
  observation  Dagster's observation of the raw files (pipelines.assets.observe_folder) in a
               process of its own that imports the code location's assets first, as the
               daemon's code server has: with nothing changed, and after the update.
  update       +1% files (at least one), then `dvc repro ingest`: its wall time against the
               full `dvc repro ingest`.

Formats: the sizes take the formats of --formats in turn (default png,jpeg: 10000 png,
40000 jpeg, 160000 png); give one format to use it for every size. --large224 N adds one
ingest-only run of N images at 224 px (in --large224-format, default jpeg).

Wall times are of the whole `byol` process (start-up and imports included). Peak RSS is
ru_maxrss from os.wait4 on the stage's process: the largest resident set one process of its
tree reached (ingest's conversion workers count on their own; they are not summed).

Prints a line per measurement and two tables, writes benchmarks/results/scale-<time>.json
(machine, git commit, arguments, every figure) and a plot, docs/scale.png. From the
repository root:

    .venv/bin/python benchmarks/scale.py                       # 10000, 40000, 160000 images
    .venv/bin/python benchmarks/scale.py --sizes 10000,40000 --dvc-push
    .venv/bin/python benchmarks/scale.py --sizes 1000,3000 --pretrain-max 3000 \\
        --evaluate-max 3000 --dvc-push --workdir /tmp/scale_try   # a quick check
    .venv/bin/python benchmarks/scale.py --sizes 100000 --formats png --dvc-scan --workdir /tmp/scale_scan
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))

from byol_core.data.card import Card, read_card  # noqa: E402
from record import write_results  # noqa: E402
from synthetic import make_folder  # noqa: E402

BIN = Path(sys.executable).parent
BYOL, DVC = BIN / "byol", BIN / "dvc"
MIB = 1 << 20
RESIDENT_ALL_MB = 1_000_000  # pretrain.resident_max_mb that keeps any data set here resident
NEW_SHARE = 0.01  # the incremental update: 1% new files
FORMATS = {"png": "png", "jpeg": "jpg", "jpg": "jpg"}
SETTINGS = {  # on top of the project's params.yaml
    "data.source": "imagefolder",
    "data.source_dir": "data/raw/images",  # where the project's .dvcignore keeps DVC out
    "data.test_fraction": 0.1,
    "model.width": 0.125,
    "model.projector_hidden": 256,
    "model.projector_out": 64,
    "model.predictor_hidden": 256,
    "pretrain.epochs": 1,
    "pretrain.warmup_epochs": 0.1,
    "pretrain.batch_size": 256,
    "pretrain.monitor_bank": 1000,
    "pretrain.monitor_queries": 200,
    "evaluate.max_iter": 50,
}
PRETRAIN_LINE = re.compile(r"^pretrain: (\d+) images .*, (resident|streamed) on (\S+)$", re.M)


def settings(px: int, args: argparse.Namespace) -> dict:
    """The params overrides of a project of ``px`` px images."""
    extra = {} if args.shard_mb is None else {"data.shard_mb": args.shard_mb}
    return {**SETTINGS, "data.image_size": px, "device": args.device, **extra}


# --- processes, measured --------------------------------------------------------------


@dataclass
class Measured:
    """One child process: wall time, peak RSS (MiB), exit code, whether it was killed at
    its time limit, and where its output went."""

    seconds: float
    peak_rss_mib: float
    returncode: int
    killed: bool
    stdout: Path
    stderr: Path

    def tail(self, lines: int = 25) -> str:
        text = self.stdout.read_text(errors="replace") + self.stderr.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])


class StageFailed(RuntimeError):
    pass


def child_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_PIPES_CONTEXT"}
    env["DVC_NO_ANALYTICS"] = "1"
    # This checkout's byol_core and pipelines, whatever the venv's editable install points at.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def _wait(pid: int, limit: float | None) -> tuple[int, object, bool]:
    """(wait status, rusage, killed): waits for ``pid``, killing it after ``limit`` seconds."""
    if limit is None:
        _, status, usage = os.wait4(pid, 0)
        return status, usage, False
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            return status, usage, False
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    _, status, usage = os.wait4(pid, 0)
    return status, usage, True


TIME = Path("/usr/bin/time")


def run_measured(cmd: list[str], cwd: Path, logs: Path, name: str, limit: float | None = None) -> Measured:
    """Run ``cmd``; stdout and stderr go to ``logs/name.out`` and ``.err``.

    Peak RSS: a child's ru_maxrss counts the memory of the process that started it (the
    high-water mark is taken as exec replaces the forked image, this benchmark's own large
    one included), so a run without a time limit is started through /usr/bin/time, a small
    process, whose %M is the command's own (its tree's largest process). A run killed at its
    limit keeps wait4's figure, an upper bound."""
    logs.mkdir(parents=True, exist_ok=True)
    out_path, err_path = logs / f"{name}.out", logs / f"{name}.err"
    rss_path = logs / f"{name}.rss"
    timed = limit is None and TIME.is_file()
    with open(out_path, "w") as out, open(err_path, "w") as err:
        started = time.perf_counter()
        proc = subprocess.Popen([str(TIME), "-f", "%M", "-o", str(rss_path), *cmd] if timed else cmd, cwd=cwd,
                                stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=child_env())
        status, usage, killed = _wait(proc.pid, limit)
        seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    peak_kib = usage.ru_maxrss
    if timed:
        lines = rss_path.read_text().split() if rss_path.is_file() else []
        peak_kib = int(lines[-1]) if lines and lines[-1].isdigit() else peak_kib
    return Measured(seconds, peak_kib / 1024, proc.returncode, killed, out_path, err_path)


def checked(measured: Measured, what: str) -> Measured:
    if measured.returncode != 0 and not measured.killed:
        raise StageFailed(f"{what} exited {measured.returncode}:\n{measured.tail()}")
    return measured


# --- the throw-away project -----------------------------------------------------------


def set_dotted(raw: dict, dotted: str, value) -> None:
    *parents, leaf = dotted.split(".")
    node = raw
    for key in parents:
        node = node[key]
    node[leaf] = value


class Project:
    """A folder with params.yaml, the synthetic images and everything the stages write,
    beside a DVC remote and the stages' logs: ``run/project``, ``run/remote``, ``run/logs``."""

    def __init__(self, run: Path, px: int, args: argparse.Namespace):
        self.run, self.px = run, px
        self.root = run / "project"
        self.images = self.root / "data" / "raw" / "images"
        self.logs = run / "logs"
        self.remote = run / "remote"
        self.settings = settings(px, args)
        self.params = yaml.safe_load((ROOT / "params.yaml").read_text())
        self.root.mkdir(parents=True)
        self.write_params()
        paths = self.params["paths"]
        self.prepared, self.cache, self.metrics = (self.root / paths[k] for k in ("prepared", "cache", "metrics"))
        self._calls = 0

    def write_params(self, **extra) -> None:
        for dotted, value in {**self.settings, **extra}.items():
            set_dotted(self.params, dotted, value)
        (self.root / "params.yaml").write_text(yaml.safe_dump(self.params, sort_keys=False))

    def byol(self, stage: str, limit: float | None = None) -> Measured:
        self._calls += 1
        measured = run_measured([str(BYOL), stage, "--params", "params.yaml"], self.root, self.logs,
                                f"{self._calls:02d}-{stage}", limit)
        return checked(measured, f"byol {stage} (in {self.root})")

    def card(self) -> Card:
        return read_card(self.prepared)

    def metric(self, name: str) -> dict:
        return json.loads((self.metrics / name).read_text())

    def dvc(self, *args: str) -> float:
        started = time.perf_counter()
        done = subprocess.run([str(DVC), *args], cwd=self.root, capture_output=True, text=True, env=child_env())
        if done.returncode != 0:
            raise StageFailed(f"dvc {' '.join(args)} exited {done.returncode}:\n"
                              f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return time.perf_counter() - started

    def init_dvc(self) -> None:
        for cmd in (["init", "-q"], ["config", "user.name", "scale benchmark"],
                    ["config", "user.email", "scale@byol.invalid"]):
            subprocess.run(["git", *cmd], cwd=self.root, check=True, capture_output=True)
        self.remote.mkdir()
        self.dvc("init", "-q")
        shutil.copy2(ROOT / ".dvc" / "config", self.root / ".dvc" / "config")  # the project's DVC settings
        self.dvc("remote", "add", "-d", "local", str(self.remote))

    def init_pipeline(self) -> None:
        """git + DVC around the project, with the project's dvc.yaml, .dvcignore and byol_core
        (the stages' code deps) and DVC settings, as a checkout of it would be."""
        for name in ("dvc.yaml", ".dvcignore"):
            shutil.copy2(ROOT / name, self.root / name)
        shutil.copytree(ROOT / "byol_core", self.root / "byol_core", ignore=shutil.ignore_patterns("__pycache__"))
        for cmd in (["init", "-q"], ["config", "user.name", "scale benchmark"],
                    ["config", "user.email", "scale@byol.invalid"]):
            subprocess.run(["git", *cmd], cwd=self.root, check=True, capture_output=True)
        self.dvc("init", "-q")
        shutil.copy2(ROOT / ".dvc" / "config", self.root / ".dvc" / "config")

    def measured(self, name: str, *cmd: str) -> Measured:
        self._calls += 1
        measured = run_measured(list(cmd), self.root, self.logs, f"{self._calls:02d}-{name}")
        return checked(measured, f"{' '.join(cmd[:3])} (in {self.root})")

    def dvc_add_push(self) -> float:
        """``dvc add`` and ``dvc push`` of the prepared folder; returns the push's seconds."""
        self.dvc("add", "-q", str(self.prepared.relative_to(self.root)))
        return self.dvc("push", "-q")


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def md5_files(folder: Path) -> dict[str, tuple[str, int]]:
    """Each file below ``folder``: (md5, bytes), by relative path (what DVC stores them by)."""
    found = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest = hashlib.md5()
        with open(path, "rb") as handle:
            while block := handle.read(1 << 22):
                digest.update(block)
        found[path.relative_to(folder).as_posix()] = (digest.hexdigest(), path.stat().st_size)
    return found


def push_estimate(before: dict[str, tuple[str, int]], after: dict[str, tuple[str, int]]) -> dict:
    """What a content-addressed push of ``after`` sends when ``before`` is already there."""
    known = {md5 for md5, _ in before.values()}
    new = {md5: size for md5, size in after.values() if md5 not in known}
    total = sum(size for _, size in after.values())
    return {"new_bytes": sum(new.values()), "total_bytes": total, "share": sum(new.values()) / total if total else 0.0,
            "new_files": len(new), "files": len(after),
            "changed_names": sorted(name for name, (md5, _) in after.items() if md5 in new)}


# --- one size ---------------------------------------------------------------------------


def say(label: str, what: str, text: str) -> None:
    print(f"[{label}] {what:<22} {text}", flush=True)


def rss_text(m: Measured) -> str:
    return f"peak RSS {m.peak_rss_mib:7.0f} MiB"


def n_images(card: Card) -> int:
    return sum(card.splits.values())


def measure_ingest(project: Project, label: str, what: str, images: int | None = None) -> tuple[dict, Card]:
    """Run ingest; returns (figures, card). ``images``: what the img/s counts (None: all)."""
    m = project.byol("ingest")
    card = project.card()
    count = n_images(card) if images is None else images
    figures = {"seconds": m.seconds, "images": count, "images_per_sec": count / m.seconds,
               "peak_rss_mib": m.peak_rss_mib, "data_hash": card.data_hash, "splits": card.splits}
    say(label, what, f"{m.seconds:8.1f} s  {count / m.seconds:8.0f} img/s  {rss_text(m)}")
    return figures, card


def generate(project: Project, n: int, fmt: str, seed: int, start: int = 0) -> float:
    started = time.perf_counter()
    make_folder(project.images, n, project.px, fmt=fmt, seed=seed, start=start)
    return time.perf_counter() - started


def ingest_and_update(project: Project, n: int, fmt: str, args: argparse.Namespace, label: str) -> dict:
    """Full ingest, +1% files and an incremental ingest (with what a push sends), then a
    from-scratch ingest that must give the same data."""
    record: dict = {}
    record["generate_seconds"] = generate(project, n, fmt, args.seed)
    say(label, "generate", f"{record['generate_seconds']:8.1f} s  {n} {fmt} files")
    record["ingest"], _ = measure_ingest(project, label, "ingest")
    before = md5_files(project.prepared)
    if args.dvc_push:
        project.init_dvc()
        first_push = project.dvc_add_push()
        remote_before = folder_bytes(project.remote)
        say(label, "dvc push (first)", f"{first_push:8.1f} s  remote {remote_before / MIB:.1f} MiB")

    new = args.add or max(1, round(n * NEW_SHARE))
    generate(project, new, fmt, args.seed, start=n)
    incremental, _ = measure_ingest(project, label, f"ingest +{new} files", images=new)
    incremental.update(new_files=new, ratio_to_full=incremental["seconds"] / record["ingest"]["seconds"])
    record["incremental"] = incremental
    say(label, "  ratio to full ingest", f"{incremental['ratio_to_full']:8.3f}")
    after = md5_files(project.prepared)
    estimate = push_estimate(before, after)
    record["push_estimate"] = estimate
    say(label, f"push after +{new} files (md5)",
        f"{estimate['new_bytes'] / MIB:8.2f} MiB of {estimate['total_bytes'] / MIB:.2f} MiB "
        f"({100 * estimate['share']:.1f}%), {estimate['new_files']} of {estimate['files']} files")
    if args.dvc_push:
        second_push = project.dvc_add_push()
        remote_after = folder_bytes(project.remote)
        record["dvc_push"] = {"remote_bytes_before": remote_before, "remote_bytes_after": remote_after,
                              "growth_bytes": remote_after - remote_before, "first_push_seconds": first_push,
                              "update_push_seconds": second_push}
        say(label, "dvc push (update)",
            f"{second_push:8.1f} s  remote grew {(remote_after - remote_before) / MIB:.2f} MiB "
            f"(estimate {estimate['new_bytes'] / MIB:.2f} MiB)")

    shutil.rmtree(project.cache)
    shutil.rmtree(project.prepared)
    scratch, _ = measure_ingest(project, label, "ingest from scratch")
    scratch["hash_equal"] = scratch["data_hash"] == incremental["data_hash"]
    scratch["files_identical"] = md5_files(project.prepared) == after
    record["scratch"] = scratch
    if scratch["hash_equal"] and scratch["files_identical"]:
        say(label, "  same data", f"yes: data_hash {scratch['data_hash']}, every file identical")
    else:
        banner = "!" * 78
        print(f"{banner}\n[{label}] INCREMENTAL AND FROM-SCRATCH INGEST DIFFER: data_hash "
              f"{incremental['data_hash']} vs {scratch['data_hash']} (equal: {scratch['hash_equal']}), "
              f"files identical: {scratch['files_identical']}\n{banner}", flush=True)
    return record


# --- the source listing, DVC and the observation (--dvc-scan) ----------------------------

# Dagster's observation of the raw files, in a process that holds the code location first,
# as the daemon's code server does when a sensor ticks.
OBSERVE = """
import json, sys, time
from pathlib import Path
import pipelines.definitions
from pipelines.assets import observe_folder
started = time.perf_counter()
result = observe_folder(Path(sys.argv[1]), Path(sys.argv[2]))
print(json.dumps({"version": result.data_version.value, "files": result.metadata["files"].value,
                  "seconds": time.perf_counter() - started}))
"""
GOALS = {  # at 1M files on 2 cores: the figure, its limit, and what it is measured against
    "dvc_repro_noop_seconds": 10.0,
    "dvc_repro_noop_peak_rss_mib": 500.0,
    "observation_seconds": 5.0,
    "observation_peak_rss_mib": 300.0,
    "dvc_repro_ingest_ratio_to_byol_ingest": 1.2,
    "update_ratio_to_full": 0.10,
}


def figures_of(m: Measured, files: int | None = None) -> dict:
    out = {"seconds": m.seconds, "peak_rss_mib": m.peak_rss_mib}
    if files:
        out["files_per_sec"] = files / m.seconds
    return out


def observe(project: Project, label: str, what: str) -> dict:
    params = project.params
    m = project.measured("observe", sys.executable, "-c", OBSERVE, str(project.images),
                         str(project.root / params["paths"]["cache"]))
    found = json.loads(m.stdout.read_text().strip().splitlines()[-1])
    record = {"process_seconds": m.seconds, "seconds": found["seconds"], "peak_rss_mib": m.peak_rss_mib,
              "files": found["files"], "version": found["version"]}
    say(label, what, f"{found['seconds']:8.1f} s  (process {m.seconds:.1f} s)  {rss_text(m)}")
    return record


def _ran(m: Measured, stage: str) -> bool:
    return f"Running stage '{stage}'" in m.stdout.read_text(errors="replace")


def scan_and_dvc(project: Project, n: int, fmt: str, args: argparse.Namespace, label: str) -> dict:
    """The scan cold and warm, `byol ingest` alone, `dvc repro ingest` full, no-op and after
    +1% files, `dvc status ingest`, and the observation (see the module's docstring)."""
    record: dict = {}
    record["generate_seconds"] = generate(project, n, fmt, args.seed)
    say(label, "generate", f"{record['generate_seconds']:8.1f} s  {n} {fmt} files")
    for what in ("scan_cold", "scan_warm"):
        m = project.byol("scan")
        record[what] = figures_of(m, n)
        say(label, f"byol scan ({what[5:]})", f"{m.seconds:8.1f} s  {n / m.seconds:8.0f} files/s  {rss_text(m)}")
    record["listing_bytes"] = (project.root / project.params["paths"]["listing"]).stat().st_size
    record["ingest"], _ = measure_ingest(project, label, "byol ingest alone")

    shutil.rmtree(project.prepared)  # a full ingest again, now under DVC: conversions and shards afresh
    for folder in project.cache.glob("images-*"):
        shutil.rmtree(folder)
    project.init_pipeline()
    m = project.measured("dvc-repro-ingest", str(DVC), "repro", "ingest")
    assert _ran(m, "scan") and _ran(m, "ingest"), m.tail()
    record["dvc_repro_ingest"] = {**figures_of(m), "ratio_to_byol_ingest": m.seconds / record["ingest"]["seconds"]}
    say(label, "dvc repro ingest", f"{m.seconds:8.1f} s  ({m.seconds / record['ingest']['seconds']:.2f}x byol "
        f"ingest alone)  {rss_text(m)}")
    m = project.measured("dvc-repro-noop", str(DVC), "repro", "ingest")
    assert _ran(m, "scan") and not _ran(m, "ingest"), m.tail()
    record["dvc_repro_noop"] = figures_of(m)
    say(label, "dvc repro (no-op)", f"{m.seconds:8.1f} s  {rss_text(m)}")
    m = project.measured("dvc-status-noop", str(DVC), "status", "ingest")
    record["dvc_status_noop"] = figures_of(m)
    say(label, "dvc status ingest", f"{m.seconds:8.1f} s  {rss_text(m)}")
    record["observation"] = observe(project, label, "observation")

    new = args.add or max(1, round(n * NEW_SHARE))
    generate(project, new, fmt, args.seed, start=n)
    m = project.measured("dvc-repro-update", str(DVC), "repro", "ingest")
    assert _ran(m, "ingest"), m.tail()
    full = record["dvc_repro_ingest"]["seconds"]
    record["update"] = {**figures_of(m), "new_files": new, "ratio_to_full": m.seconds / full}
    say(label, f"dvc repro +{new} files", f"{m.seconds:8.1f} s  ({m.seconds / full:.3f} of the full one)  "
        f"{rss_text(m)}")
    generate(project, new, fmt, args.seed, start=n + new)  # new to the observation: it reads them
    record["observation_new_files"] = {**observe(project, label, f"observation +{new} files"), "new_files": new}

    figures = {"dvc_repro_noop_seconds": record["dvc_repro_noop"]["seconds"],
               "dvc_repro_noop_peak_rss_mib": record["dvc_repro_noop"]["peak_rss_mib"],
               "observation_seconds": record["observation"]["seconds"],
               "observation_peak_rss_mib": record["observation"]["peak_rss_mib"],
               "dvc_repro_ingest_ratio_to_byol_ingest": record["dvc_repro_ingest"]["ratio_to_byol_ingest"],
               "update_ratio_to_full": record["update"]["ratio_to_full"]}
    record["goals"] = {key: {"value": value, "limit": GOALS[key], "met": value <= GOALS[key]}
                       for key, value in figures.items()}
    missed = [key for key, goal in record["goals"].items() if not goal["met"]]
    say(label, "goals (1M-file limits)", "all met" if not missed else "not met: " + ", ".join(missed))
    return record


def pretrain_run(project: Project, label: str, mode: str, limit: float | None = None) -> dict:
    project.write_params(**{"pretrain.resident_max_mb": 0 if mode == "streamed" else RESIDENT_ALL_MB})
    m = project.byol("pretrain", limit)
    found = PRETRAIN_LINE.search(m.stderr.read_text(errors="replace"))
    got = found.group(2) if found else None
    figures = {"seconds": m.seconds, "peak_rss_mib": m.peak_rss_mib, "mode": got,
               "device": found.group(3) if found else None}
    if got != mode:
        print(f"[{label}] WARNING: asked for a {mode} pretrain, the log says {got!r}", flush=True)
    if limit is not None:
        figures.update(killed_after_seconds=limit if m.killed else None, finished=not m.killed,
                       label=f"first {limit:g} s" if m.killed else "finished within the limit")
        say(label, f"pretrain {mode} {limit:g}s", f"{m.seconds:8.1f} s  {'killed' if m.killed else 'finished':>14}  "
            f"{rss_text(m)} ({figures['label']})")
        return figures
    metrics = project.metric("pretrain.json")
    figures.update(images_per_sec=metrics["images_per_sec"], knn_top1=metrics["knn_top1"],
                   final_loss=metrics["final_loss"])
    say(label, f"pretrain {mode}", f"{m.seconds:8.1f} s  {metrics['images_per_sec']:8.0f} img/s  {rss_text(m)}")
    return figures


def evaluate_run(project: Project, label: str) -> dict:
    m = project.byol("evaluate")
    metrics = project.metric("eval.json")
    say(label, "evaluate", f"{m.seconds:8.1f} s  linear top-1 {metrics['linear_top1']:.3f}  {rss_text(m)}")
    return {"seconds": m.seconds, "peak_rss_mib": m.peak_rss_mib, "linear_top1": metrics["linear_top1"],
            "knn_top1": metrics["knn_top1"], "pixels_linear_top1": metrics["pixels_linear_top1"]}


def run_size(n: int, px: int, fmt: str, args: argparse.Namespace, scratch: Path, ingest_only: bool = False) -> dict:
    label = f"N={n} {fmt} {px}px"
    run = scratch / f"n{n}-{px}px"
    record = {"n": n, "px": px, "format": fmt, "pixel_bytes": n * 3 * px * px}
    try:
        project = Project(run, px, args)
        if args.dvc_scan:
            record.update(scan_and_dvc(project, n, fmt, args, label))
            return record
        if ingest_only:
            record["generate_seconds"] = generate(project, n, fmt, args.seed)
            say(label, "generate", f"{record['generate_seconds']:8.1f} s  {n} {fmt} files")
            record["ingest"], _ = measure_ingest(project, label, "ingest")
            return record
        record.update(ingest_and_update(project, n, fmt, args, label))
        pretrain: dict = {}
        if n <= args.pretrain_max:
            pretrain = {mode: pretrain_run(project, label, mode) for mode in ("streamed", "resident")}
        elif args.pretrain_seconds > 0:
            pretrain = {"streamed_limited": pretrain_run(project, label, "streamed", args.pretrain_seconds)}
        record["pretrain"] = pretrain
        finished = any("images_per_sec" in p for p in pretrain.values())
        record["evaluate"] = evaluate_run(project, label) if n <= args.evaluate_max and finished else None
        return record
    finally:
        if args.keep:
            print(f"[{label}] kept {run}", flush=True)
        else:
            shutil.rmtree(run, ignore_errors=True)


# --- the record, tables and plot --------------------------------------------------------


def _cell(value, spec: str, scale: float = 1.0) -> str:
    """``value / scale`` in ``spec`` ("8.1f"), or a dash as wide."""
    return format("-", ">" + spec.split(".")[0]) if value is None else format(value / scale, spec)


def _get(record: dict, *keys):
    for key in keys:
        if not isinstance(record, dict) or record.get(key) is None:
            return None
        record = record[key]
    return record


def _print_head(head: str) -> None:
    print(head)
    print("-" * len(head))


def print_tables(sizes: list[dict]) -> None:
    print("\ningest (wall s / img/s / peak RSS MiB); incremental: +1% files; push: new bytes after it")
    head = (f"{'N':>7} {'fmt':>4} {'px':>3} {'pixels MiB':>10} {'ingest s':>8} {'img/s':>7} {'RSS':>6} "
            f"{'incr s':>7} {'ratio':>6} {'same':>5} {'push MiB':>9} {'of MiB':>8} {'dvc grew':>9}")
    _print_head(head)
    for r in sizes:
        same = _get(r, "scratch", "hash_equal")
        same = "-" if same is None else "yes" if same else "NO"
        print(f"{r['n']:>7} {r['format']:>4} {r['px']:>3} {r['pixel_bytes'] / MIB:>10.1f} "
              f"{_cell(_get(r, 'ingest', 'seconds'), '8.1f')} {_cell(_get(r, 'ingest', 'images_per_sec'), '7.0f')} "
              f"{_cell(_get(r, 'ingest', 'peak_rss_mib'), '6.0f')} {_cell(_get(r, 'incremental', 'seconds'), '7.1f')} "
              f"{_cell(_get(r, 'incremental', 'ratio_to_full'), '6.3f')} {same:>5} "
              f"{_cell(_get(r, 'push_estimate', 'new_bytes'), '9.2f', MIB)} "
              f"{_cell(_get(r, 'push_estimate', 'total_bytes'), '8.1f', MIB)} "
              f"{_cell(_get(r, 'dvc_push', 'growth_bytes'), '9.2f', MIB)}")
    print("\npretrain, 1 epoch (wall s / img/s / peak RSS MiB) and evaluate (wall s / peak RSS MiB)")
    head = (f"{'N':>7} {'streamed s':>10} {'img/s':>6} {'RSS':>6} {'resident s':>10} {'img/s':>6} {'RSS':>6} "
            f"{'eval s':>7} {'RSS':>6} {'linear':>6}")
    _print_head(head)
    for r in sizes:
        if "pretrain" not in r:
            continue
        limited = _get(r, "pretrain", "streamed_limited")
        streamed = f"{_cell(_get(r, 'pretrain', 'streamed', 'seconds'), '10.1f')} " \
                   f"{_cell(_get(r, 'pretrain', 'streamed', 'images_per_sec'), '6.0f')} " \
                   f"{_cell(_get(r, 'pretrain', 'streamed', 'peak_rss_mib'), '6.0f')}"
        if limited:
            streamed = f"{limited['label']:>17} {limited['peak_rss_mib']:6.0f}"
        print(f"{r['n']:>7} {streamed} {_cell(_get(r, 'pretrain', 'resident', 'seconds'), '10.1f')} "
              f"{_cell(_get(r, 'pretrain', 'resident', 'images_per_sec'), '6.0f')} "
              f"{_cell(_get(r, 'pretrain', 'resident', 'peak_rss_mib'), '6.0f')} "
              f"{_cell(_get(r, 'evaluate', 'seconds'), '7.1f')} {_cell(_get(r, 'evaluate', 'peak_rss_mib'), '6.0f')} "
              f"{_cell(_get(r, 'evaluate', 'linear_top1'), '6.3f')}")


def print_scan_table(sizes: list[dict]) -> None:
    print("\nthe source listing, DVC and the observation (wall s / peak RSS MiB of the largest process)")
    head = (f"{'N':>8} {'scan cold':>9} {'warm':>6} {'RSS':>5} {'ingest':>7} {'dvc repro':>9} {'x':>5} "
            f"{'no-op':>6} {'RSS':>5} {'status':>6} {'observe':>7} {'RSS':>5} {'+1%':>6} {'ratio':>6}")
    _print_head(head)
    for r in sizes:
        print(f"{r['n']:>8} {_cell(_get(r, 'scan_cold', 'seconds'), '9.1f')} {_cell(_get(r, 'scan_warm', 'seconds'), '6.1f')} "
              f"{_cell(_get(r, 'scan_warm', 'peak_rss_mib'), '5.0f')} {_cell(_get(r, 'ingest', 'seconds'), '7.1f')} "
              f"{_cell(_get(r, 'dvc_repro_ingest', 'seconds'), '9.1f')} "
              f"{_cell(_get(r, 'dvc_repro_ingest', 'ratio_to_byol_ingest'), '5.2f')} "
              f"{_cell(_get(r, 'dvc_repro_noop', 'seconds'), '6.1f')} {_cell(_get(r, 'dvc_repro_noop', 'peak_rss_mib'), '5.0f')} "
              f"{_cell(_get(r, 'dvc_status_noop', 'seconds'), '6.1f')} {_cell(_get(r, 'observation', 'seconds'), '7.1f')} "
              f"{_cell(_get(r, 'observation', 'peak_rss_mib'), '5.0f')} {_cell(_get(r, 'update', 'seconds'), '6.1f')} "
              f"{_cell(_get(r, 'update', 'ratio_to_full'), '6.3f')}")
        missed = [k for k, g in (r.get("goals") or {}).items() if not g["met"]]
        if r.get("goals"):
            print(f"{'':>8} goals: {'all met' if not missed else 'not met: ' + ', '.join(missed)}")


def _series(sizes: list[dict], *keys) -> tuple[list[int], list[float]]:
    points = [(r["n"], _get(r, *keys)) for r in sizes]
    points = [(n, v) for n, v in points if v is not None]
    return [n for n, _ in points], [v for _, v in points]


def plot(record: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = record["sizes"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    for keys, name, marker in ((("ingest", "peak_rss_mib"), "ingest", "o"),
                               (("pretrain", "streamed", "peak_rss_mib"), "pretrain streamed", "s"),
                               (("pretrain", "resident", "peak_rss_mib"), "pretrain resident", "^"),
                               (("evaluate", "peak_rss_mib"), "evaluate", "D")):
        xs, ys = _series(sizes, *keys)
        if xs:
            left.plot(xs, ys, marker=marker, label=name)
    xs, ys = _series(sizes, "pretrain", "streamed_limited", "peak_rss_mib")
    if xs:
        seconds = record["args"]["pretrain_seconds"]
        left.plot(xs, ys, marker="s", linestyle="none", fillstyle="none", color="C1",
                  label=f"pretrain streamed, first {seconds:g} s")
    left.plot([r["n"] for r in sizes], [r["pixel_bytes"] / MIB for r in sizes], "k--",
              label=f"pixel bytes (N x 3 x {record['args']['px']}²)")
    big = record.get("large224")
    if big and big.get("ingest"):
        left.plot([big["n"]], [big["ingest"]["peak_rss_mib"]], marker="*", markersize=12, linestyle="none",
                  color="C0", label=f"ingest at 224 px ({big['format']})")
    left.set(xscale="log", yscale="log", xlabel="images (N)", ylabel="peak RSS (MiB)", title="memory")
    for keys, name, marker in ((("ingest", "seconds"), "ingest", "o"),
                               (("incremental", "seconds"), "ingest after +1% files", "v"),
                               (("pretrain", "streamed", "seconds"), "pretrain streamed (1 epoch)", "s")):
        xs, ys = _series(sizes, *keys)
        if xs:
            right.plot(xs, ys, marker=marker, label=name)
    right.set(xscale="log", yscale="log", xlabel="images (N)", ylabel="wall time (s)", title="time")
    for axes in (left, right):
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize=8)
    m = record["machine"]
    formats = "/".join(sorted({r["format"] for r in sizes}))
    fig.suptitle(f"byol scale: {record['args']['px']} px {formats} images, {m['cores']} CPUs, "
                 f"{m['ram_total_mib'] / 1024:.0f} GiB RAM, commit {record['git']['commit']}"
                 f"{' (dirty)' if record['git']['dirty'] else ''}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- main -------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--sizes", default="10000,40000,160000", help="comma-separated image counts")
    parser.add_argument("--px", type=int, default=32, help="image side in pixels")
    parser.add_argument("--formats", default="png,jpeg",
                        help="comma-separated: png, jpeg; the sizes take them in turn")
    parser.add_argument("--add", type=int, default=0, metavar="K",
                        help="the update adds K new files (default: 1%% of each size)")
    parser.add_argument("--large224", type=int, default=0, metavar="N",
                        help="also ingest N images at 224 px, ingest only (0: skip)")
    parser.add_argument("--large224-format", default="jpeg", choices=sorted(FORMATS))
    parser.add_argument("--pretrain-max", type=int, default=40000, help="pretrain (streamed and resident) up to this N")
    parser.add_argument("--pretrain-seconds", type=float, default=0,
                        help="above --pretrain-max: streamed pretrain killed after this many seconds (0: skip)")
    parser.add_argument("--evaluate-max", type=int, default=40000, help="evaluate up to this N")
    parser.add_argument("--dvc-push", action="store_true", help="also measure a real dvc push to a local remote")
    parser.add_argument("--dvc-scan", action="store_true",
                        help="measure the source listing, dvc repro / status and the observation instead "
                             "(no pretrain or evaluate)")
    parser.add_argument("--shard-mb", type=float, default=None,
                        help="data.shard_mb of the projects (default: params.yaml's); small values show "
                             "what a push sends when small data spans several shards")
    parser.add_argument("--device", default="auto", help="params device for pretrain and evaluate")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic images")
    parser.add_argument("--workdir", type=Path, default=ROOT / ".tmp_scale",
                        help="where the throw-away projects go (same disk as the repo by default)")
    parser.add_argument("--keep", action="store_true", help="keep the throw-away projects")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="folder for the JSON record")
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "scale.png", help="where the plot goes")
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args()
    args.size_list = [int(s) for s in args.sizes.split(",") if s.strip()]
    args.format_list = [f.strip().lower() for f in args.formats.split(",") if f.strip()]
    bad = [f for f in args.format_list if f not in FORMATS]
    if bad or not args.format_list:
        parser.error(f"--formats: use png and/or jpeg, not {','.join(bad) or 'nothing'}")
    if not args.size_list or min(args.size_list) < 20:
        parser.error("--sizes: give image counts of at least 20 (both splits need images)")
    return args


def main() -> None:
    args = parse_args()
    for tool in (BYOL, DVC) if args.dvc_push or args.dvc_scan else (BYOL,):
        if not tool.is_file():
            sys.exit(f"scale: {tool} is missing (run `make setup`)")
    figures = {
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "settings": settings(args.px, args),
        "notes": {"formats": "the sizes take the formats in turn",
                  "peak_rss": "ru_maxrss (os.wait4) of the stage's process tree: the largest single process",
                  "seconds": "wall time of the whole byol process, start-up included",
                  "incremental.images_per_sec": "new files per second",
                  "push_estimate": "bytes of prepared files whose md5 the folder did not hold before the update"},
        "sizes": [], "large224": None, "complete": False,
    }
    if args.dvc_scan:
        figures["notes"].update(
            peak_rss="ru_maxrss (os.wait4) of the command's process tree: the largest single process (dvc, or the "
                     "byol command it starts)",
            seconds="wall time of the whole command (dvc, byol), start-up included",
            observation="seconds: the observation alone, in a process that already holds the code location "
                        "(process_seconds: with its start and imports); peak RSS: that whole process",
            goals="the limits the issue set for 1M files on 2 cores, checked at every size")
        figures["dvc"] = subprocess.run([str(DVC), "--version"], capture_output=True, text=True).stdout.strip()
    software = ("torch", "numpy", "pillow", "pyarrow", "dagster")
    out, record = write_results("scale", figures, out=args.out, software=software, tag="scan" if args.dvc_scan else None)
    created = not args.workdir.exists()
    args.workdir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="scale-", dir=args.workdir))
    print(f"scale: {len(args.size_list)} sizes, projects in {scratch}, record {out}", flush=True)
    try:
        for i, n in enumerate(args.size_list):
            fmt = args.format_list[i % len(args.format_list)]
            figures["sizes"].append(run_size(n, args.px, fmt, args, scratch))
            write_results("scale", figures, out=args.out, software=software, path=out)
        if args.large224 and not args.dvc_scan:
            figures["large224"] = run_size(args.large224, 224, args.large224_format, args, scratch, ingest_only=True)
        figures["complete"] = True
    except StageFailed as exc:
        figures["error"] = str(exc)
        print(f"scale: {exc}", file=sys.stderr)
    finally:
        _, record = write_results("scale", figures, out=args.out, software=software, path=out)
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
            if created and not any(args.workdir.iterdir()):
                args.workdir.rmdir()
    if args.dvc_scan:
        print_scan_table(record["sizes"])
    else:
        print_tables(record["sizes"] + ([record["large224"]] if record["large224"] else []))
    if not args.no_plot and record["sizes"] and not args.dvc_scan:
        plot(record, args.plot)
        print(f"\nplot: {args.plot}")
    print(f"record: {out}")
    if not record["complete"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
