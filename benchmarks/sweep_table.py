"""The DVC experiments of a sweep (benchmarks/sweep.sh) as one Markdown table.

    .venv/bin/python benchmarks/sweep_table.py [--baseline main] [NAME ...]

Reads `dvc exp show --json` (dvc is a command; never imported): for each finished
experiment, the params that differ from the params.yaml of the commit it ran from, then pretrain's
training seconds and img/s (metrics/pretrain.json), and evaluate's linear and kNN top-1,
retrieval recall@1, and the raw-pixel probe of the same run (metrics/eval.json).
Experiments are listed best linear top-1 first; a failed or unfinished one is named last.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def experiments(show: list[dict]) -> list[tuple[str, dict, dict]]:
    """Every experiment as (name, its data, the params of the commit it was run from)."""
    found = []
    for row in show:
        if row["rev"] == "workspace":
            continue
        baseline = flatten(row["data"]["params"]["params.yaml"]["data"])
        for exp in row.get("experiments") or []:
            for rev in exp.get("revs") or []:
                found.append((rev.get("name") or rev["rev"][:7], rev, baseline))
    return found


def _num(value, digits: int) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "–"


def table(found: list[tuple[str, dict, dict]], names: set[str]) -> tuple[str, list[dict]]:
    """The Markdown table, and its rows as a list of dicts for the JSON record."""
    rows, failed, records = [], [], []
    for name, rev, baseline in found:
        if names and name not in names:
            continue
        data = rev.get("data") or {}
        metrics = data.get("metrics") or {}
        ev = (metrics.get("metrics/eval.json") or {}).get("data") or {}
        pre = (metrics.get("metrics/pretrain.json") or {}).get("data") or {}
        if "linear_top1" not in ev:
            failed.append(name)
            continue
        params = flatten(data["params"]["params.yaml"]["data"])
        changed = ", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(params.items()) if baseline.get(k) != v)
        recall = ev.get("retrieval", {})
        records.append({"experiment": name, "rev": rev.get("rev"), "changed": {k: v for k, v in params.items() if baseline.get(k) != v},
                        "pretrain": pre, "eval": {k: v for k, v in ev.items() if not isinstance(v, (dict, list))},
                        "retrieval": recall})
        rows.append((ev["linear_top1"], f"| {name} | {changed or '(baseline)'} | {_num(pre.get('train_seconds'), 0)} | "
                     f"{_num(pre.get('images_per_sec'), 0)} | **{ev['linear_top1']:.4f}** | {ev['knn_top1']:.4f} | "
                     f"{_num(recall.get('byol', {}).get('recall_at_1'), 4)} | {ev['pixels_linear_top1']:.4f} | "
                     f"{_num(recall.get('pixels', {}).get('recall_at_1'), 4)} | {_num(ev.get('effective_rank'), 1)} |"))
    head = ("| experiment | params changed from the baseline | pretrain s | img/s | linear | kNN | recall@1 | "
            "pixels linear | pixels recall@1 | eff. rank |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    body = "\n".join(line for _, line in sorted(rows, key=lambda r: -r[0]))
    tail = f"\n\nNot finished or failed: {', '.join(failed)}" if failed else ""
    return f"{head}\n{body}{tail}", records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="only these experiments (default: all)")
    parser.add_argument("--commits", type=int, default=20,
                        help="experiments based on this many of HEAD's last commits (dvc exp show -n)")
    parser.add_argument("--record", action="store_true",
                        help="also write the rows to benchmarks/results/sweep-<time>.json (benchmarks/record.py)")
    parser.add_argument("--json", type=Path, help="read this `dvc exp show --json` output instead of running dvc")
    args = parser.parse_args()
    if args.json:
        show = json.loads(args.json.read_text())
    else:
        done = subprocess.run([str(ROOT / ".venv/bin/dvc"), "exp", "show", "--json", "-n", str(args.commits)], cwd=ROOT,
                              capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"sweep_table: dvc exp show failed: {done.stderr.strip()[-400:]}")
        show = json.loads(done.stdout)
    text, records = table(experiments(show), set(args.names))
    print(text)
    if args.record:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from record import write_results
        path, _ = write_results("sweep", {"experiments": records}, software=("torch",))
        print(f"\nrecord: {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
