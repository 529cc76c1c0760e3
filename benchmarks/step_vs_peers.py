"""Our BYOL training step against lightly 1.6 and byol-pytorch 0.9, in one process, alternating.

    python benchmarks/step_vs_peers.py                      # CPU defaults: a few minutes at most
    python benchmarks/step_vs_peers.py --device cuda --width 1.0 --batch 512 --steps 30 --warmup 10

Same backbone (byol_core's ResNet-18, small stem, at --width, same init seed), image size,
batch size and step counts for all three; each framework keeps its own heads (sized like
ours), augmentations, EMA and input pipeline (benchmarks/peers.py says how each is set up).
Images: Fashion-MNIST train images, upsampled 28 -> --size and repeated to 3 channels.
Rounds: ours, lightly, byol-pytorch in turn, each --warmup untimed then --steps timed
steps; img/s = timed images / wall time of the timed steps (device synced at both ends).
A round in which other processes took more than --max-others of the CPU is "disturbed"
and replaced (up to --retries times); img/s = median over the --repeats clean rounds.
Also: our augmentation share of the step, a per-phase breakdown of our step, and each
framework's peak memory. Prints a Markdown table and writes a JSON record to --out.
Peers: pip install -e '.[bench]' (see docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import peers  # noqa: E402
from byol_core.config import load_params  # noqa: E402
from byol_core.device import resolve_device, synchronize  # noqa: E402
from byol_core.data.sources.fashion_mnist import read_idx  # noqa: E402
from byol_core.train.step import Recipe  # noqa: E402
from record import write_results  # noqa: E402

ORDER = ("ours", "lightly", "byol-pytorch")
OPTIMIZERS = {"own": "each its own example's: ours LARS, lightly SGD lr 0.06, byol-pytorch Adam lr 3e-4",
              "lars": "all our LARS (same param groups, momentum, weight decay, trust coefficient; "
                      "ours on its LR schedule, the peers at its peak LR)"}


def parse_args(argv=None) -> argparse.Namespace:
    cores = len(os.sched_getaffinity(0))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    p.add_argument("--width", type=float, default=0.25, help="ResNet-18 width multiplier (0.25: 16 base channels)")
    p.add_argument("--size", type=int, default=32, help="image side in px (Fashion-MNIST is upsampled to it)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=8, help="timed steps per run")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before each run's timed ones")
    p.add_argument("--repeats", type=int, default=5, help="clean rounds wanted (one timed run per framework each)")
    p.add_argument("--retries", type=int, default=3, help="extra rounds allowed to replace disturbed ones")
    p.add_argument("--max-others", type=float, default=0.05,
                   help="a round is disturbed when other processes used more than this share of the CPU in one of its runs")
    p.add_argument("--workers", type=int, default=cores, help=f"lightly's DataLoader workers (default: {cores} = CPUs)")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                   help="ours (auto: bf16 autocast on CUDA, fp32 on CPU)")
    p.add_argument("--compile", action="store_true", help="ours: torch.compile the forward (pretrain.compile)")
    p.add_argument("--no-graph", action="store_true",
                   help="ours: eager steps even on one CUDA GPU (default: the whole step as a CUDA graph, pretrain.cuda_graph)")
    p.add_argument("--peer-amp", action="store_true", help="run the peers under bf16 autocast too (default fp32)")
    p.add_argument("--optimizer", default="own", choices=tuple(OPTIMIZERS), help="; ".join(f"{k}: {v}" for k, v in OPTIMIZERS.items()))
    p.add_argument("--proj-hidden", type=int, help="default: params.yaml model.projector_hidden")
    p.add_argument("--proj-out", type=int, help="default: params.yaml model.projector_out")
    p.add_argument("--pred-hidden", type=int, help="default: params.yaml model.predictor_hidden")
    p.add_argument("--images", type=int, default=60_000, help="how many Fashion-MNIST train images to use")
    p.add_argument("--data", type=Path, default=ROOT / "data/raw/fashion-mnist")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results")
    p.add_argument("--skip-missing", action="store_true", help="benchmark only the peers that are installed")
    p.add_argument("--no-memory", action="store_true", help="CPU: skip the per-framework memory child processes")
    p.add_argument("--probe", choices=ORDER, help=argparse.SUPPRESS)  # internal: one framework's memory, in a child
    return p.parse_args(argv)


def make_setup(args, device: torch.device, n_images: int) -> peers.Setup:
    """params.yaml with the flags applied; ours trains on pretrain's recipe over ``n_images``."""
    params = load_params(ROOT / "params.yaml")
    m = params.model
    model = m.model_copy(update={"width": args.width,
                                 "projector_hidden": args.proj_hidden or m.projector_hidden,
                                 "projector_out": args.proj_out or m.projector_out,
                                 "predictor_hidden": args.pred_hidden or m.predictor_hidden})
    pretrain = params.pretrain.model_copy(update={"batch_size": args.batch, "precision": args.precision,
                                                  "compile": args.compile, "cuda_graph": not args.no_graph})
    params = params.model_copy(update={"model": model, "pretrain": pretrain})
    return peers.Setup(params, device, args.size, args.peer_amp, args.optimizer, args.workers,
                       Recipe.for_run(pretrain, n_images))


def load_images(args, device: torch.device) -> tuple[torch.Tensor, np.ndarray]:
    """uint8 (N, 3, S, S) on the device, and the same as (N, S, S, 3) in host memory."""
    path = args.data / "train-images-idx3-ubyte.gz"
    if not path.is_file():
        sys.exit(f"step_vs_peers: {path} is missing: run scripts/setup.sh (or point --data at the Fashion-MNIST .gz files)")
    raw = torch.from_numpy(read_idx(path)[:args.images].copy()).unsqueeze(1)
    chunks = [F.interpolate(c.float(), size=(args.size, args.size), mode="bilinear", align_corners=False)
              .round_().clamp_(0, 255).to(torch.uint8) for c in raw.split(8192)]
    images = torch.cat(chunks).expand(-1, 3, -1, -1).contiguous()
    return images.to(device), images.permute(0, 2, 3, 1).contiguous().numpy()


def cpu_ticks(pids: list[int]) -> tuple[int, int]:
    """(busy ticks of the whole machine, ticks of this process and ``pids``), from /proc."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    busy = sum(fields) - fields[3] - fields[4] - fields[7]  # all but idle, iowait, steal
    own = 0
    for pid in ("self", *pids):
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        own += int(stat[11]) + int(stat[12])  # utime, stime
    return busy, own


def timed_run(runner, warmup: int, steps: int, batch: int, device: torch.device) -> tuple[float, float]:
    """img/s over ``steps`` steps after ``warmup`` untimed ones (loader included), and the
    share of the machine's CPU that other processes used meanwhile (0: a clean run)."""
    runner.start_run(warmup + steps)
    for _ in range(warmup):
        runner.step()
    pids = getattr(runner, "worker_pids", list)()
    synchronize(device)
    busy0, own0 = cpu_ticks(pids)
    started = time.perf_counter()
    for _ in range(steps):
        runner.step()
    synchronize(device)
    seconds = time.perf_counter() - started
    busy1, own1 = cpu_ticks(pids)
    capacity = seconds * os.sysconf("SC_CLK_TCK") * os.cpu_count()
    return steps * batch / seconds, max(0.0, ((busy1 - busy0) - (own1 - own0)) / capacity)


def alternate(runners: dict, args, device: torch.device) -> list[dict]:
    """Rounds of one timed run per framework, in turn, until ``repeats`` rounds were clean
    (other processes took at most ``max_others`` of the CPU in each run of the round) or
    ``repeats + retries`` rounds were run."""
    rounds = []
    while sum(r["clean"] for r in rounds) < args.repeats and len(rounds) < args.repeats + args.retries:
        row = {}
        for name, runner in runners.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            rate, others = timed_run(runner, args.warmup, args.steps, args.batch, device)
            row[name] = {"img_s": rate, "others_cpu": round(others, 3)}
            if device.type == "cuda":
                row[name]["peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        row["clean"] = max(v["others_cpu"] for v in row.values()) <= args.max_others
        rounds.append(row)
        print(f"round {len(rounds)}{'' if row['clean'] else ' (disturbed)'}: " + ", ".join(
            f"{n} {row[n]['img_s']:.0f} img/s (others' CPU {100 * row[n]['others_cpu']:.0f}%)" for n in runners),
            file=sys.stderr, flush=True)
    return rounds


def median_seconds(fn, n: int, device: torch.device) -> float:
    times = []
    for _ in range(n):
        synchronize(device)
        started = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def proc_kib(key: str, pid: int | str = "self") -> int:
    return int(re.search(rf"{key}:\s+(\d+)", Path(f"/proc/{pid}/status").read_text()).group(1))


def probe(args, device: torch.device) -> dict:
    """In a child process: one framework alone; peak RSS (VmHWM) of its training steps."""
    images, hwc = load_images(args, device)
    runner = peers.build(args.probe, make_setup(args, device, len(images)), images, hwc)
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM: setup's transient peaks do not count
    before = proc_kib("VmRSS")
    runner.start_run(args.warmup + 2)
    for _ in range(args.warmup + 2):
        runner.step()
    out = {"rss_before_mib": before / 1024, "peak_rss_mib": proc_kib("VmHWM") / 1024}
    if args.probe == "lightly":  # their private pages only: the rest is shared with this process
        rollups = [Path(f"/proc/{pid}/smaps_rollup").read_text() for pid in runner.worker_pids()]
        out["workers_private_mib"] = sum(int(kib) for text in rollups
                                         for kib in re.findall(r"^Private_\w+:\s+(\d+)", text, re.M)) / 1024
    return out


def cpu_memory(names: list[str]) -> dict:
    results = {}
    for name in names:
        cmd = [sys.executable, str(Path(__file__).resolve()), *sys.argv[1:], "--probe", name]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            results[name] = {"error": (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]}
            continue
        results[name] = json.loads(done.stdout.strip().splitlines()[-1])
    return results


def main() -> None:
    args = parse_args()
    device = resolve_device(args.device)
    if args.probe:
        print(json.dumps(probe(args, device)))
        return
    names = ["ours"]
    for dist in ("lightly", "byol-pytorch"):
        try:
            peers.require(dist)
            names.append(dist)
        except peers.MissingPeer as exc:
            if not args.skip_missing:
                sys.exit(f"step_vs_peers: {exc}")
            print(f"step_vs_peers: skipping {dist}: not installed", file=sys.stderr)
    images, hwc = load_images(args, device)
    setup = make_setup(args, device, len(images))
    runners = {}
    for name in names:  # build and prime each (lazy init, workers' start, cuDNN choices)
        try:
            runners[name] = peers.build(name, setup, images, hwc)
        except ValueError as exc:
            sys.exit(f"step_vs_peers: {exc}")
        timed_run(runners[name], args.warmup, 1, args.batch, device)
    rounds = alternate(runners, args, device)
    clean = [r for r in rounds if r["clean"]] or rounds  # all rounds if none was clean (warned below)
    ours = runners["ours"]
    ours.start_run(2 * args.steps + 2)
    aug_s = median_seconds(ours.make_views, args.steps, device)
    phases = [ours.breakdown() for _ in range(max(3, args.steps // 2))]
    breakdown = {k: statistics.median(p[k] for p in phases) * 1000 for k in phases[0]}
    medians = {n: statistics.median(r[n]["img_s"] for r in clean) for n in names}
    step_ms = args.batch / medians["ours"] * 1000

    if device.type == "cuda":
        memory = {n: {"peak_allocated_mib": max(r[n]["peak_mib"] for r in rounds)} for n in names}
        memory_method = "torch.cuda.max_memory_allocated, reset before each timed run; max over runs"
    elif args.no_memory:
        memory, memory_method = {}, "not measured (--no-memory)"
    else:
        memory = cpu_memory(names)
        memory_method = ("peak RSS (VmHWM) of a child process running that framework alone for warmup+2 steps, "
                         "reset after setup (data and model already resident); lightly's loader workers: their private memory (smaps_rollup) at the end")
    m = setup.params.model
    figures = {
        "config": {"device": str(device), "torch_threads": torch.get_num_threads(),
                   "arch": m.arch, "width": m.width, "small_stem": m.small_stem,
                   "base_channels": setup.spec.base_channels, "size": args.size, "batch": args.batch,
                   "heads": {"projector_hidden": m.projector_hidden, "projector_out": m.projector_out,
                             "predictor_hidden": m.predictor_hidden},
                   "steps": args.steps, "warmup": args.warmup, "repeats": args.repeats, "workers": args.workers,
                   "precision_ours": args.precision, "compile_ours": args.compile,
                   "cuda_graph_ours": ours.graph is not None, "peers": "bf16 autocast" if args.peer_amp else "fp32",
                   "optimizer": f"{args.optimizer}: {OPTIMIZERS[args.optimizer]}", "images": len(images)},
        "img_per_s": {n: {"median": round(medians[n], 1), "runs": [round(r[n]["img_s"], 1) for r in clean]}
                      for n in names},
        "rounds": rounds, "rounds_used": "clean" if any(r["clean"] for r in rounds) else "all (none was clean)",
        "clean_threshold": args.max_others,
        "ratios": {f"ours/{n}": round(medians["ours"] / medians[n], 3) for n in names if n != "ours"},
        "augmentation": {"two_views_ms": aug_s * 1000, "step_ms": step_ms, "share": aug_s * 1000 / step_ms,
                         "share_in_breakdown": breakdown["augment"] / sum(breakdown.values())},
        "ours_breakdown_ms": breakdown,
        "memory": memory, "memory_method": memory_method,
    }
    path, record = write_results("step_vs_peers", figures, device=device, out=args.out,
                                 tag=f"{device.type}{'-compile' if args.compile else ''}",
                                 software=("torch", "torchvision", "lightly", "byol-pytorch"))
    print_table(record, path)


def print_table(rec: dict, path: Path) -> None:
    c, mach, sw = rec["config"], rec["machine"], rec["software"]
    where = mach["gpu"] or f"{mach['cpu']}, {mach['cores']} cores"
    versions = ", ".join(f"{k} {v}" for k, v in sw.items() if k in ("torch", "lightly", "byol-pytorch") and v)
    print(f"\n{rec['date'][:10]} - {where} - {versions} - commit {rec['git']['commit']}")
    print(f"ResNet-18 w{c['width']} ({c['base_channels']} base ch.), small stem, {c['size']} px, batch {c['batch']}, "
          f"heads {c['heads']['projector_hidden']}/{c['heads']['projector_out']}/{c['heads']['predictor_hidden']}; "
          f"{c['steps']} timed steps after {c['warmup']} warm-up, {c['repeats']} repeats, alternating; "
          f"ours {c['precision_ours']}{' + torch.compile' if c.get('compile_ours') else ''}"
          f"{' + CUDA graph' if c.get('cuda_graph_ours') else ''}, peers {c['peers']}; "
          f"lightly loader: {c['workers']} workers")
    print(f"Optimizer: {c['optimizer']}\n")
    print("| framework | img/s (median) | runs | ours / this | peak memory |")
    print("| --- | --- | --- | --- | --- |")
    for name, r in rec["img_per_s"].items():
        ratio = "1.00" if name == "ours" else f"{rec['ratios'][f'ours/{name}']:.2f}x"
        mem = rec["memory"].get(name, {})
        if "peak_allocated_mib" in mem:
            mem_s = f"{mem['peak_allocated_mib']:.0f} MiB allocated"
        elif "peak_rss_mib" in mem:
            mem_s = f"{mem['peak_rss_mib']:.0f} MiB RSS (+{mem['peak_rss_mib'] - mem['rss_before_mib']:.0f} training)"
            if "workers_private_mib" in mem:
                mem_s += f"; + {mem['workers_private_mib']:.0f} MiB private in its workers"
        else:
            mem_s = str(mem.get("error", "-"))
        runs = ", ".join(f"{x:.0f}" for x in r["runs"])
        print(f"| {name} | **{r['median']:.0f}** | {runs} | {ratio} | {mem_s} |")
    a, b = rec["augmentation"], rec["ours_breakdown_ms"]
    print(f"\nOur augmentation share: two views {a['two_views_ms']:.1f} ms of a {a['step_ms']:.1f} ms step = "
          f"**{100 * a['share']:.1f}%**")
    print("Our step by phase (synced, median ms): " + ", ".join(f"{k} {v:.1f}" for k, v in b.items())
          + f" (sum {sum(b.values()):.1f}; augment {100 * a['share_in_breakdown']:.1f}% of it)")
    n_clean = sum(r["clean"] for r in rec["rounds"])
    print(f"Rounds: {len(rec['rounds'])} run, {n_clean} clean (others' CPU <= {100 * rec['clean_threshold']:.0f}% "
          f"in each run), medians over {rec['rounds_used']}")
    if n_clean < rec["config"]["repeats"]:
        print(f"WARNING: only {n_clean} of {rec['config']['repeats']} rounds were clean: other processes were busy; "
              "rerun on a quiet machine.")
    print(f"Memory: {rec['memory_method']}\nRecord: {path}")


if __name__ == "__main__":
    main()
