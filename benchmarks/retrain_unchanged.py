"""What a scheduled retraining run costs when the data did not change, through the real
UI stack: `dagster dev` over this project, "Materialize all" launched through GraphQL, DVC
skipping every stage, the three asset checks running. Prints the figures (and, with
--screenshots DIR, saves pictures of the asset graph and the encoder's page taken by
headless Chromium).

Run it on a project whose `dvc repro` is up to date:  python benchmarks/retrain_unchanged.py
"""

import argparse
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the Dagster harness: tests/helpers/devserver.py

from pipelines.checks import CHECKS  # noqa: E402
from helpers.devserver import DagsterDev  # noqa: E402

KEYS = ["prepared_dataset", "byol_encoder", "linear_eval", "onnx_encoder"]


def screenshot(url: str, out: Path, height: int) -> None:
    subprocess.run(["chromium", "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--window-size=1800,{height}", "--virtual-time-budget=20000", f"--screenshot={out}", url],
                   check=True, capture_output=True, timeout=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--screenshots", type=Path, metavar="DIR",
                        help="save the asset graph and the encoder's page as PNGs in DIR")
    args = parser.parse_args()
    checks = {spec.asset_key.to_user_string(): spec.name for c in CHECKS for spec in c.check_specs}
    dvc = Path(sys.executable).parent / "dvc"
    started = time.perf_counter()
    subprocess.run([str(dvc), "repro"], cwd=ROOT, check=True, capture_output=True)
    noop_repro = time.perf_counter() - started

    with tempfile.TemporaryDirectory() as scratch, DagsterDev(ROOT, Path(scratch) / "dagster-dev.log") as ui:
        walls, inside = [], []
        for _ in range(args.runs):
            started = time.perf_counter()
            run_id = ui.materialize_all(KEYS, checks)
            status = ui.wait([run_id], timeout=1800)[run_id]
            walls.append(time.perf_counter() - started)
            if status != "SUCCESS":
                sys.exit(f"run {run_id} ended {status}:\n{ui.log_tail()}")
            run = ui.run(run_id)
            inside.append(run["endTime"] - run["startTime"])
            stages = {key: ui.latest_materialization(key)["metadata"]["dvc stage"]["text"] for key in KEYS}
        if args.screenshots:
            ui.query("mutation { setNuxSeen }")  # no "join the community" pop-up over the graph
            screenshot(f"{ui.url}/asset-groups/byol", args.screenshots.resolve() / "asset-graph.png", 950)
            screenshot(f"{ui.url}/assets/byol_encoder", args.screenshots.resolve() / "byol-encoder.png", 1300)

    print(f"machine: {platform.machine()}, {platform.processor() or 'cpu'}; date {date.today()}")
    print(f"dvc repro with nothing to do: {noop_repro:.2f} s")
    print(f"retrain run, launch to success (x{args.runs}): " + ", ".join(f"{w:.1f}" for w in walls)
          + f" s; median {statistics.median(walls):.1f} s")
    print(f"  of which the run itself (start to end): median {statistics.median(inside):.1f} s")
    print(f"  ratio to a bare no-op dvc repro: {statistics.median(walls) / noop_repro:.1f}x")
    print(f"  stages in the last run: {stages}")


if __name__ == "__main__":
    main()
