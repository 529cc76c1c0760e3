"""Pretraining throughput with the data resident on the device against streamed from the
memory-mapped shards, through the real loader (byol_core.loader) and training step.

    python benchmarks/stream_vs_resident.py [--n 20000] [--px 32] [--width 0.125] [--batch 256]
                                            [--steps 20] [--rounds 3] [--precision auto]

Writes a synthetic prepared split (random uint8 RGB images, in shards of --shard-mb) to a
temporary folder, then runs alternating rounds of --steps training steps on each path, each
round drawing a fresh permutation as an epoch does. Reports median img/s per path and the
ratio streamed/resident, and writes a JSON record to benchmarks/results/. On a GPU use
``--width 1 --batch 512 --heads 4096,256,4096`` for the standard ResNet-18.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from byol_core import loader  # noqa: E402
from byol_core.augment import byol_views  # noqa: E402
from byol_core.config import load_params  # noqa: E402
from byol_core.device import memory_format, resolve_device, synchronize  # noqa: E402
from byol_core.store import ShardedImages, ShardWriter  # noqa: E402
from byol_core.train import TrainState, build_model, build_optimizer, train_step  # noqa: E402


def write_split(folder: Path, n: int, px: int, shard_mb: float) -> ShardedImages:
    rng = np.random.default_rng(0)
    writer = ShardWriter(folder, "train", (3, px, px), int(shard_mb * (1 << 20)))
    keys = [f"{i:08d}" for i in range(n)]
    for start, stop in writer.plan(keys):
        writer.write(rng.integers(0, 256, (min(4096, stop - i), 3, px, px), dtype=np.uint8)
                     for i in range(start, stop, 4096))
    layout = writer.close()
    return ShardedImages([folder / s["file"] for s in layout["shards"]], [s["count"] for s in layout["shards"]],
                         (3, px, px))


def run_round(batches, n, state, views, px, mean, std, device, precision, steps, batch, seed) -> float:
    """img/s of ``steps`` training steps on ``batches`` (a loader), one epoch's worth of order."""
    order = torch.randperm(n, generator=torch.Generator(device=device).manual_seed(seed), device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    synchronize(device)
    started = time.perf_counter()
    for images in batches.batches(order, steps, batch, batch, 0):
        train_step(state, images, views, px, mean, std, gen, 0.05, 0.99, precision)
    synchronize(device)
    return steps * batch / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--px", type=int, default=32)
    parser.add_argument("--width", type=float, default=0.125)
    parser.add_argument("--heads", default="1024,128,1024", help="projector hidden, out, predictor hidden")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--shard-mb", type=float, default=256)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    device = resolve_device(args.device)
    hidden, out, pred = (int(v) for v in args.heads.split(","))
    params = load_params(ROOT / "params.yaml")
    params = params.model_copy(update={"model": params.model.model_copy(update={
        "width": args.width, "projector_hidden": hidden, "projector_out": out, "predictor_hidden": pred})})
    with tempfile.TemporaryDirectory(dir=args.workdir) as folder:
        images = write_split(Path(folder), args.n, args.px, args.shard_mb)
        paths = {"resident": loader.Resident(images, device), "streamed": loader.Streamed(images, device)}
        model = build_model(params, 3).to(device, memory_format=memory_format(device))
        state = TrainState(model, build_optimizer(model, params))
        views = byol_views(params.augment, args.px)
        mean = torch.full((3,), 0.5, device=device)
        std = torch.full((3,), 0.25, device=device)
        run = dict(n=len(images), state=state, views=views, px=args.px, mean=mean, std=std, device=device,
                   precision=args.precision, batch=args.batch)
        for path in paths.values():  # warm-up: kernels, allocator, page cache
            run_round(path, steps=args.warmup, seed=99, **run)
        rates: dict[str, list[float]] = {name: [] for name in paths}
        for r in range(args.rounds):
            for name in (list(paths) if r % 2 == 0 else list(reversed(paths))):
                rates[name].append(run_round(paths[name], steps=args.steps, seed=r, **run))
                print(f"round {r + 1} {name}: {rates[name][-1]:.0f} img/s", flush=True)
    medians = {name: statistics.median(v) for name, v in rates.items()}
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    record = {"benchmark": "stream_vs_resident", "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "machine": machine, "torch": torch.__version__, "commit": commit, "args": vars(args),
              "rates": rates, "median_img_s": medians, "streamed_over_resident": medians["streamed"] / medians["resident"]}
    results = ROOT / "benchmarks" / "results"
    results.mkdir(exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%dT%H%M%S")
    (results / f"stream_vs_resident-{device.type}-{stamp}.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"\n{datetime.date.today()} - {machine} - torch {torch.__version__} - commit {commit}")
    print(f"n {args.n} x 3x{args.px}x{args.px}, width {args.width}, batch {args.batch}, {args.precision}")
    print(f"resident {medians['resident']:.0f} img/s | streamed {medians['streamed']:.0f} img/s | "
          f"streamed/resident {record['streamed_over_resident']:.3f}")


if __name__ == "__main__":
    main()
