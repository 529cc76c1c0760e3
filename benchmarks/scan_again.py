"""The cheap figures of a `scale.py --dvc-scan --keep` project again, three times each: `byol
scan` (warm), `dvc repro ingest` and `dvc status ingest` with nothing changed, and Dagster's
observation; medians, and the largest peak RSS; with ``--new-files N``, then the observation
that meets N new files (it reads them). For a quieter moment than the long run had.

    .venv/bin/python benchmarks/scan_again.py /tmp/scale_scan/scale-XXXX/n1000000-32px/project
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import scale  # noqa: E402
from record import write_results  # noqa: E402
from synthetic import make_folder  # noqa: E402

RUNS = 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("project", type=Path)
    parser.add_argument("--new-files", type=int, default=0,
                        help="then add this many files and measure the observation that reads them")
    args = parser.parse_args()
    root = args.project.resolve()
    logs = root.parent / "logs-again"
    images, cache = root / "data" / "raw" / "images", root / ".byol" / "cache"
    runs: dict[str, list] = {"scan_warm": [], "dvc_repro_noop": [], "dvc_status_noop": [], "observation": []}

    def measured(name: str, *cmd: str) -> scale.Measured:
        return scale.checked(scale.run_measured(list(cmd), root, logs, name), name)

    found = {}
    for i in range(RUNS):
        m = measured(f"scan-{i}", str(scale.BYOL), "scan", "--params", "params.yaml")
        runs["scan_warm"].append((m.seconds, m.peak_rss_mib))
        m = measured(f"noop-{i}", str(scale.DVC), "repro", "ingest")
        if "Running stage 'ingest'" in m.stdout.read_text():
            sys.exit(f"{root}: ingest ran, so the folder changed since the last repro: run this again")
        runs["dvc_repro_noop"].append((m.seconds, m.peak_rss_mib))
        m = measured(f"status-{i}", str(scale.DVC), "status", "ingest")
        runs["dvc_status_noop"].append((m.seconds, m.peak_rss_mib))
        m = measured(f"observe-{i}", sys.executable, "-c", scale.OBSERVE, str(images), str(cache))
        found = json.loads(m.stdout.read_text().strip().splitlines()[-1])
        runs["observation"].append((found["seconds"], m.peak_rss_mib, m.seconds))
        print(i, {key: value[-1] for key, value in runs.items()}, flush=True)
    figures = {key: {"seconds_median": statistics.median(r[0] for r in value),
                     "peak_rss_mib_max": max(r[1] for r in value), "runs": [list(r) for r in value]}
               for key, value in runs.items()}
    figures["files"] = found.get("files")
    if args.new_files:  # the tick that meets new files: it reads them (the folder keeps them)
        params = scale.yaml.safe_load((root / "params.yaml").read_text())
        make_folder(images, args.new_files, params["data"]["image_size"], start=found["files"])
        m = measured("observe-new", sys.executable, "-c", scale.OBSERVE, str(images), str(cache))
        seen = json.loads(m.stdout.read_text().strip().splitlines()[-1])
        figures["observation_new_files"] = {"seconds": seen["seconds"], "peak_rss_mib": m.peak_rss_mib,
                                            "process_seconds": m.seconds, "new_files": args.new_files}
        print("observation after new files", figures["observation_new_files"], flush=True)
    path, _ = write_results("scale-scan-again", {"project": str(root), "figures": figures,
                                                 "notes": "observation seconds: in a process that holds the code "
                                                          "location; the last entry of each run: its whole process"},
                            software=("pyarrow", "dagster"))
    print(path)


if __name__ == "__main__":
    main()
