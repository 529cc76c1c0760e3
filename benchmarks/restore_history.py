"""A stage restored on a fresh worker, against the size of the remote's history: the real
pretrain asset (pipelines/assets.py) on a fresh clone whose inputs ran before, through an
SSH remote on loopback, two ways:

- from the dvc.lock entry an earlier run recorded in Dagster (pipelines/restore.py): DVC pulls
  that run's outputs only, and nothing is pushed;
- from DVC's run-cache (an instance with no record of the run, as for runs made outside
  Dagster): `dvc repro --pull` copies every run-cache entry of the remote first, and
  `dvc push --run-cache` copies every local one back.

The remote's run-cache is grown with copies of the real entry under other keys (what earlier
runs of other inputs leave). Prints the medians and records them in benchmarks/results/.

    python benchmarks/restore_history.py [--entries 0,200,800] [--repeats 3]
"""

import argparse
import hashlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the project maker and the sshd of the tests

import dagster as dg  # noqa: E402

from conftest import TINY_DVC, dvc, git, make_project  # noqa: E402
from helpers.services import sshd  # noqa: E402
from pipelines.assets import byol_encoder, prepared_dataset  # noqa: E402
from pipelines.resources import RESTORED, RESTORED_FROM, DvcProject  # noqa: E402
from record import write_results  # noqa: E402


def machine(root: Path, url: str, key: Path) -> DvcProject:
    dvc(root, "remote", "add", "--local", "store", url)
    dvc(root, "remote", "modify", "--local", "store", "keyfile", str(key))
    return DvcProject(project_dir=str(root), remote="store")


def materialize(asset, project: DvcProject, instance) -> tuple[dict, float]:
    started = time.perf_counter()
    result = dg.materialize([asset], resources={"dvc": project}, instance=instance)
    seconds = time.perf_counter() - started
    assert result.success
    [event] = result.get_asset_materialization_events()
    return event.step_materialization_data.materialization.metadata, seconds


def grow(store: Path, entries: int) -> int:
    """Copies of the real run-cache entries under new keys until the remote holds ``entries``."""
    runs = store / "runs"
    real = sorted(path for path in runs.rglob("*") if path.is_file())
    held = len(real)
    for i in range(held, entries):
        key = hashlib.sha256(f"key {i}".encode()).hexdigest()
        folder = runs / key[:2] / key
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(real[i % len(real)], folder / hashlib.sha256(f"value {i}".encode()).hexdigest())
    return max(held, entries)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", default="0,200,800", help="sizes of the remote's run-cache, comma-separated")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    sizes = [int(n) for n in args.entries.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as scratch, sshd(Path(scratch)) as (url, key, store):
        origin = make_project(Path(scratch) / "origin", TINY_DVC)
        git(origin, "add", "-A")
        git(origin, "commit", "-qm", "project")
        first = machine(origin, url, key)
        instance = dg.DagsterInstance.ephemeral()  # the deployment's instance: it saw the first run
        materialize(prepared_dataset, first, instance)
        made, trained = materialize(byol_encoder, first, instance)
        assert made["dvc stage"].value == "ran"
        clones = 0

        def fresh() -> DvcProject:
            nonlocal clones
            clones += 1
            root = Path(scratch) / f"clone-{clones}"
            subprocess.run(["git", "clone", "-q", str(origin), str(root)], check=True)
            return machine(root, url, key)

        for size in sizes:
            held = grow(store, size)
            adopted, run_cache = [], []
            for _ in range(args.repeats):
                made, seconds = materialize(byol_encoder, fresh(), instance)
                assert made["dvc stage"].value == RESTORED and made[RESTORED_FROM].value.startswith("run ")
                adopted.append(seconds)
                other = dg.DagsterInstance.ephemeral()  # no record of pretrain: DVC's run-cache it is
                materialize(prepared_dataset, first, other)
                made, seconds = materialize(byol_encoder, fresh(), other)
                assert made["dvc stage"].value == RESTORED and made[RESTORED_FROM].value == "DVC's run-cache"
                run_cache.append(seconds)
            row = {"run_cache_entries": held, "adopted_entry_s": round(statistics.median(adopted), 2),
                   "dvc_run_cache_s": round(statistics.median(run_cache), 2),
                   "ratio": round(statistics.median(run_cache) / statistics.median(adopted), 2),
                   "adopted_all": [round(s, 2) for s in adopted], "run_cache_all": [round(s, 2) for s in run_cache]}
            rows.append(row)
            print(f"{held:5d} run-cache entries on the remote: restored from the recorded entry "
                  f"{row['adopted_entry_s']:.2f} s, from DVC's run-cache {row['dvc_run_cache_s']:.2f} s "
                  f"(x{row['ratio']:.2f}; medians of {args.repeats})", flush=True)
    path, _ = write_results("restore_history", {"first_pretrain_s": round(trained, 2), "rows": rows,
                                                "stage": "pretrain", "params": "tests/conftest.py TINY_DVC",
                                                "remote": "ssh on 127.0.0.1"})
    print(f"recorded in {path}")


if __name__ == "__main__":
    main()
