"""A full `dvc repro ingest` and re-ingests after 1% more files, on a kept `scale.py --dvc-scan
--keep` project, with this checkout's code: the issue's goal is a `dvc repro` after +1% files
in at most a tenth of the full one's time. For a quieter moment than the long run had.

    .venv/bin/python benchmarks/reingest_again.py /tmp/scale_scan/scale-XXXX/n1000000-32px/project

The project gets this checkout's byol_core, dvc.yaml, .dvcignore and DVC settings (as a
checkout of it would have them); then its prepared folder and conversion cache are deleted, so
the first `dvc repro ingest` converts every file, as in `scale.py` (`--no-run-cache`: DVC would
restore an earlier run on the same listing from its run-cache). Each update adds 1% more
files (`benchmarks/synthetic.py`, numbered after the last) and runs `dvc repro ingest`. The
ratio is each update's wall time over the full one's; the record keeps each run's figures and
the medians. ``--cache-type copy`` measures DVC's default link type instead of the project's.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import sys
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))

import scale  # noqa: E402
from record import write_results  # noqa: E402
from synthetic import make_folder  # noqa: E402


def _sync(root: Path) -> None:
    shutil.rmtree(root / "byol_core")
    shutil.copytree(scale.ROOT / "byol_core", root / "byol_core", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy2(scale.ROOT / name, root / name)
    shutil.copy2(scale.ROOT / ".dvc" / "config", root / ".dvc" / "config")


def _stage_seconds(output: str) -> dict[str, float]:
    """Each stage's own time, as its summary line gives it (``scan: ... 6.0s)``, ``ingest: ...
    (data HASH, 25.2s; ...)``)."""
    found = {}
    for stage, pattern in (("scan", r"^scan: .*, ([0-9.]+)s\)$"), ("ingest", r"^ingest: .*\(data \w+, ([0-9.]+)s;")):
        match = re.search(pattern, output, re.MULTILINE)
        if match:
            found[stage] = float(match.group(1))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("project", type=Path)
    parser.add_argument("--updates", type=int, default=3)
    parser.add_argument("--cache-type", choices=("project", "copy"), default="project")
    args = parser.parse_args()
    root = args.project.resolve()
    logs = root.parent / "logs-reingest"
    _sync(root)
    if args.cache_type == "copy":
        scale.checked(scale.run_measured([str(scale.DVC), "config", "--unset", "cache.type"], root, logs, "config"),
                      "dvc config")
    params = scale.yaml.safe_load((root / "params.yaml").read_text())
    listing, images = root / params["paths"]["listing"], root / params["data"]["source_dir"]
    shutil.rmtree(root / params["paths"]["prepared"], ignore_errors=True)
    for folder in (root / params["paths"]["cache"]).glob("images-*"):
        shutil.rmtree(folder)

    def repro(name: str, *flags: str) -> dict:
        m = scale.checked(scale.run_measured([str(scale.DVC), "repro", *flags, "ingest"], root, logs, name), name)
        files = pq.read_metadata(listing).num_rows
        stages = _stage_seconds(m.stdout.read_text(errors="replace"))
        print(f"{name}: {m.seconds:.1f} s (scan {stages.get('scan', 0):.1f} s, ingest {stages.get('ingest', 0):.1f} s, "
              f"the rest DVC and start-up), peak RSS {m.peak_rss_mib:.0f} MiB, {files} files", flush=True)
        return {"seconds": m.seconds, "peak_rss_mib": m.peak_rss_mib, "files": files,
                "stage_seconds": stages}

    full = repro("full", "--no-run-cache")  # run it: an earlier run of the same listing would be restored
    updates = []
    for i in range(args.updates):
        count = pq.read_metadata(listing).num_rows
        new = max(1, round(count * scale.NEW_SHARE))
        make_folder(images, new, params["data"]["image_size"], start=count)
        run = repro(f"update-{i}")
        updates.append({**run, "new_files": new, "ratio_to_full": run["seconds"] / full["seconds"]})
    ratio = statistics.median(u["ratio_to_full"] for u in updates)
    own = statistics.median(u["stage_seconds"]["ingest"] / full["stage_seconds"]["ingest"] for u in updates)
    print(f"+1% files: median {statistics.median(u['seconds'] for u in updates):.1f} s, {ratio:.3f} of the full "
          f"{full['seconds']:.1f} s (goal: at most {scale.GOALS['update_ratio_to_full']}); the ingest stage alone "
          f"(its own time): {own:.3f} of the full one's")
    path, _ = write_results("reingest-again", {"project": str(root), "cache_type": args.cache_type, "full": full,
                                               "updates": updates, "update_ratio_to_full_median": ratio,
                                               "ingest_stage_ratio_to_full_median": own,
                                               "goal": scale.GOALS["update_ratio_to_full"]},
                            software=("pyarrow",))
    print(path)


if __name__ == "__main__":
    main()
