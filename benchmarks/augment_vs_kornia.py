"""Our batched BYOL views against kornia's per-sample augmentations, same ops and batch.

Both make one BYOL view of a uint8 batch on the device, every parameter drawn per sample:
random resized crop + flip, colour jitter (p 0.8), grayscale (p 0.2), solarize, then
normalisation. Alternating rounds, median ms per view. Kornia is a bench-only extra
(`pip install -e .[bench]`). Usage: python benchmarks/augment_vs_kornia.py [--device cuda]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from byol_core.train.augment import byol_views, make_view  # noqa: E402
from byol_core.config import load_params  # noqa: E402
from byol_core.device import resolve_device, synchronize  # noqa: E402
from record import write_results  # noqa: E402


def kornia_view(size: int, mean: torch.Tensor, std: torch.Tensor, cfg):
    import kornia.augmentation as K

    return K.AugmentationSequential(
        K.RandomResizedCrop((size, size), scale=cfg.crop_scale, ratio=cfg.crop_ratio),
        K.RandomHorizontalFlip(p=cfg.flip_p),
        K.ColorJitter(cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue, p=cfg.jitter_p),
        K.RandomGrayscale(p=cfg.grayscale_p),
        K.RandomSolarize(thresholds=0.0, additions=0.0, p=cfg.solarize_p[1]),
        K.Normalize(mean=mean, std=std),
    ).to(mean.device)


def timed(fn, device, repeats: int) -> float:
    synchronize(device)
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    synchronize(device)
    return (time.perf_counter() - started) / repeats * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=5, help="views per timed run")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    device = resolve_device(args.device)
    cfg = load_params(ROOT / "params.yaml").augment
    images = torch.randint(0, 256, (args.batch, 3, args.size, args.size), dtype=torch.uint8, device=device)
    mean = torch.tensor([0.5, 0.5, 0.5], device=device)
    std = torch.tensor([0.25, 0.25, 0.25], device=device)
    spec = byol_views(cfg, args.size)[1]
    gen = torch.Generator(device=device).manual_seed(0)
    pipeline = kornia_view(args.size, mean, std, cfg)
    runners = {
        "ours": lambda: make_view(images, spec, args.size, mean, std, gen),
        "kornia": lambda: pipeline(images.float() / 255),
    }
    for fn in runners.values():  # warm-up
        timed(fn, device, 2)
    runs = {name: [] for name in runners}
    for _ in range(args.rounds):
        for name, fn in runners.items():
            runs[name].append(timed(fn, device, args.calls))
    median = {name: statistics.median(r) for name, r in runs.items()}
    path, record = write_results("augment_vs_kornia", {"batch": args.batch, "size": args.size, "rounds": args.rounds,
                                                       "calls": args.calls, "ms_per_view": runs, "median_ms": median},
                                 device=device, tag=device.type, out=args.out, software=("torch", "kornia"))
    m, sw = record["machine"], record["software"]
    print(f"{record['date'][:10]} - {m['gpu'] or m['cpu'] + ' CPU'} - torch {sw['torch']}, kornia {sw['kornia']} - "
          f"commit {record['git']['commit']}")
    print(f"one BYOL view, batch {args.batch}, 3x{args.size}x{args.size}; median of {args.rounds} rounds")
    print("| pipeline | ms per view (median) | runs | kornia / this |\n| --- | --- | --- | --- |")
    for name in runners:
        print(f"| {name} | {median[name]:.2f} | {', '.join(f'{v:.1f}' for v in runs[name])} | "
              f"{median['kornia'] / median[name]:.2f}x |")
    print(f"record: {path}")


if __name__ == "__main__":
    main()
