"""Throughput of one full BYOL training step (both views made on the device, online
forward+backward, target forward, LARS step, EMA update), for a few encoder sizes.

    python benchmarks/pretrain_throughput.py [--steps 30] [--configs default,r18-w1]

Each step is byol_core's own (``byol_core.step.train_step``) on pretrain's recipe for
Fashion-MNIST's 60k images, on one batch of random uint8 images of Fashion-MNIST's shape.
Medians over timed steps, after warm-up. Prints one JSON line per config and a Markdown
table for benchmarks/RESULTS.md, and writes a JSON record to --out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from byol_core.augment import Augmenter  # noqa: E402
from byol_core.config import load_params  # noqa: E402
from byol_core.device import resolve_device, synchronize  # noqa: E402
from byol_core.step import Recipe, new_state, train_step  # noqa: E402
from record import write_results  # noqa: E402

IMAGES = 60_000  # the recipe's data size: Fashion-MNIST's train split, as the default run

# name -> (model overrides, batch size, precision)
CONFIGS = {
    "default": ({}, 256, "auto"),
    "r18-w1-fp32": ({"width": 1.0, "projector_hidden": 4096, "projector_out": 256, "predictor_hidden": 4096}, 512, "fp32"),
    "r18-w1-bf16": ({"width": 1.0, "projector_hidden": 4096, "projector_out": 256, "predictor_hidden": 4096}, 512, "bf16"),
}


def bench(name: str, steps: int, warmup: int, device: torch.device) -> dict:
    overrides, batch, precision = CONFIGS[name]
    params = load_params(ROOT / "params.yaml")
    pretrain = params.pretrain.model_copy(update={"batch_size": batch, "precision": precision})
    params = params.model_copy(update={"model": params.model.model_copy(update=overrides), "pretrain": pretrain})
    state = new_state(params, 1, Recipe.for_run(pretrain, IMAGES), device)
    images = torch.randint(0, 256, (batch, 1, 28, 28), dtype=torch.uint8, device=device)
    mean, std = torch.full((1,), 0.286, device=device), torch.full((1,), 0.353, device=device)
    augment = Augmenter.for_data(params.augment, 28, mean, std, torch.Generator(device=device).manual_seed(0))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(warmup + steps):
        synchronize(device)
        started = time.perf_counter()
        train_step(state, images, augment)
        synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - started)
    if device.type == "cuda":
        # The step must never wait on the host: any implicit sync in it raises here.
        torch.cuda.set_sync_debug_mode("error")
        try:
            train_step(state, images, augment)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    median = statistics.median(times)
    result = {"config": name, "batch": batch, "precision": precision, "width": params.model.width,
              "host_syncs_in_step": 0 if device.type == "cuda" else None,
              "step_ms_median": median * 1000, "images_per_sec": batch / median}
    if device.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    device = resolve_device(args.device)
    rows = []
    for name in args.configs.split(","):
        row = bench(name, args.steps, args.warmup, device)
        print(json.dumps(row), flush=True)
        rows.append(row)
    path, record = write_results("pretrain_throughput", {"steps": args.steps, "warmup": args.warmup, "results": rows},
                                 device=device, tag=device.type, out=args.out, software=("torch",))
    m = record["machine"]
    where = m["gpu"] or f"{m['cpu']}, {torch.get_num_threads()} threads"
    print(f"\n{record['date'][:10]} - {where} - torch {torch.__version__} - commit {record['git']['commit']}\n")
    print("| config | batch | precision | step ms (median) | img/s |")
    print("| --- | --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['config']} | {row['batch']} | {row['precision']} | {row['step_ms_median']:.1f} "
              f"| {row['images_per_sec']:.0f} |")
    print(f"Record: {path}")


if __name__ == "__main__":
    main()
