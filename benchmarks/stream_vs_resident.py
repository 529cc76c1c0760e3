"""Pretraining throughput with the data resident on the device against streamed from the
shards (read with pread), through the real loader (byol_core.train.loader) and training step.

    python benchmarks/stream_vs_resident.py [--n 20000] [--px 32] [--width 0.125] [--batch 256]
                                            [--steps 20] [--rounds 3] [--precision auto]

Writes a synthetic prepared split (random uint8 RGB images, in shards of --shard-mb) to a
temporary folder, then runs alternating rounds of --steps training steps on each path, each
round drawing a fresh permutation as an epoch does. Reports median img/s per path and the
ratio streamed/resident, and writes a JSON record to --out. On a GPU use
``--width 1 --batch 512 --heads 4096,256,4096`` for the standard ResNet-18.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from byol_core.train import loader  # noqa: E402
from byol_core.train.augment import Augmenter  # noqa: E402
from byol_core.config import load_params  # noqa: E402
from byol_core.device import resolve_device, synchronize  # noqa: E402
from byol_core.train.step import Recipe, new_state, train_step  # noqa: E402
from byol_core.data.store import ShardedImages, ShardWriter  # noqa: E402
from record import write_results  # noqa: E402


def write_split(folder: Path, n: int, px: int, shard_mb: float) -> ShardedImages:
    rng = np.random.default_rng(0)
    writer = ShardWriter(folder, "train", (3, px, px), int(shard_mb * (1 << 20)))
    keys = [f"{i:08d}" for i in range(n)]
    for start, stop in writer.plan(keys):
        writer.write((rng.integers(0, 256, (min(4096, stop - i), 3, px, px), dtype=np.uint8)
                      for i in range(start, stop, 4096)), stop - start)
    layout = writer.close()
    return ShardedImages([folder / s["file"] for s in layout["shards"]], [s["count"] for s in layout["shards"]],
                         (3, px, px))


def run_round(batches, n, state, augment, device, steps, batch, seed) -> float:
    """img/s of ``steps`` training steps on ``batches`` (a loader), one epoch's worth of order."""
    order = torch.randperm(n, generator=torch.Generator(device=device).manual_seed(seed), device=device)
    augment = augment.reseeded(torch.Generator(device=device).manual_seed(seed))
    synchronize(device)
    started = time.perf_counter()
    for images in batches.batches(order, steps, batch, batch, 0):
        train_step(state, images, augment)
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
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    device = resolve_device(args.device)
    hidden, out, pred = (int(v) for v in args.heads.split(","))
    params = load_params(ROOT / "params.yaml")
    pretrain = params.pretrain.model_copy(update={"batch_size": args.batch, "precision": args.precision})
    params = params.model_copy(update={"pretrain": pretrain, "model": params.model.model_copy(update={
        "width": args.width, "projector_hidden": hidden, "projector_out": out, "predictor_hidden": pred})})
    with tempfile.TemporaryDirectory(dir=args.workdir) as folder:
        images = write_split(Path(folder), args.n, args.px, args.shard_mb)
        paths = {"resident": loader.Resident(images, device), "streamed": loader.Streamed(images, device)}
        state = new_state(params, 3, Recipe.for_run(pretrain, len(images)), device)
        mean = torch.full((3,), 0.5, device=device)
        std = torch.full((3,), 0.25, device=device)
        run = dict(n=len(images), state=state, augment=Augmenter.for_data(params.augment, args.px, mean, std),
                   device=device, batch=args.batch)
        for path in paths.values():  # warm-up: kernels, allocator, page cache
            run_round(path, steps=args.warmup, seed=99, **run)
        rates: dict[str, list[float]] = {name: [] for name in paths}
        for r in range(args.rounds):
            for name in (list(paths) if r % 2 == 0 else list(reversed(paths))):
                rates[name].append(run_round(paths[name], steps=args.steps, seed=r, **run))
                print(f"round {r + 1} {name}: {rates[name][-1]:.0f} img/s", flush=True)
    medians = {name: statistics.median(v) for name, v in rates.items()}
    path, record = write_results("stream_vs_resident", {
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "rates": rates,
        "median_img_s": medians, "streamed_over_resident": medians["streamed"] / medians["resident"]},
        device=device, tag=device.type, out=args.out, software=("torch",))
    m = record["machine"]
    where = m["gpu"] or f"{m['cpu']}, {torch.get_num_threads()} threads"
    print(f"\n{record['date'][:10]} - {where} - torch {torch.__version__} - commit {record['git']['commit']}")
    print(f"n {args.n} x 3x{args.px}x{args.px}, width {args.width}, batch {args.batch}, {args.precision}")
    print(f"resident {medians['resident']:.0f} img/s | streamed {medians['streamed']:.0f} img/s | "
          f"streamed/resident {record['streamed_over_resident']:.3f}")
    print(f"Record: {path}")


if __name__ == "__main__":
    main()
