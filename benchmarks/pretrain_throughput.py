"""Throughput of one full BYOL training step (both views made on the device, online
forward+backward, target forward, LARS step, EMA update), for a few encoder sizes, and on
a GPU the gain of each speed lever, one at a time.

    python benchmarks/pretrain_throughput.py [--steps 30] [--configs default,r18-w1-bf16]
    python benchmarks/pretrain_throughput.py --device cuda --configs r18-w1-bf16 \\
        --levers nchw,eager,cudnn-benchmark,graph,compile

Each step is byol_core's own (``byol_core.train.step.train_step``, or the same step captured as
a CUDA graph by ``byol_core.train.graphed``) on pretrain's recipe for Fashion-MNIST's 60k images,
on batches of random uint8 images of Fashion-MNIST's shape (or --px). Rounds of --steps
steps timed as a whole (device synced at both ends), after --warmup untimed steps; img/s is
the median over --rounds rounds. Levers, each adding one thing to the one before it:

    nchw             eager step, plain NCHW layout
    eager            eager step, channels_last on CUDA (byol_core.device's layout)
    cudnn-benchmark  + cuDNN's autotuner picks each convolution's kernel (timing them)
    graph            the whole step as one CUDA graph, cuDNN deterministic, no autotuner:
                     what pretraining runs (pretrain.cuda_graph, byol_core.device.exact_kernels)
    graph-autotune   the same graph with the autotuner's kernels instead (not bitwise
                     reproducible from one process to the next)
    compile          eager + cudnn-benchmark + torch.compile of the forward (pretrain.compile)
    compile-max-autotune  the same in mode="max-autotune" (minutes of compiling)

Also the augmentation's share: both views alone (eager, and captured as a graph on CUDA)
against the step. Prints JSON lines and Markdown tables, writes a JSON record to --out.
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

from byol_core.train import graphed, step  # noqa: E402
from byol_core.train.augment import Augmenter  # noqa: E402
from byol_core.config import load_params  # noqa: E402
from byol_core.device import exact_cudnn, resolve_device, synchronize  # noqa: E402
from byol_core.train.step import Recipe, new_state, train_step  # noqa: E402
from record import write_results  # noqa: E402

IMAGES = 60_000  # the recipe's data size: Fashion-MNIST's train split, as the default run
HEADS = {"width": 1.0, "projector_hidden": 4096, "projector_out": 256, "predictor_hidden": 4096}

# name -> (model overrides, batch size, precision)
CONFIGS = {
    "default": ({}, 256, "auto"),
    "r18-w1-fp32": (HEADS, 512, "fp32"),
    "r18-w1-bf16": (HEADS, 512, "bf16"),
}
LEVERS = ("nchw", "eager", "cudnn-benchmark", "graph", "graph-autotune", "compile", "compile-max-autotune")


def _cudnn(lever: str):
    """cuDNN's settings for a lever: pretraining's, the autotuner, or torch's defaults."""
    if lever == "graph":
        return exact_cudnn()
    autotune = lever in ("cudnn-benchmark", "graph-autotune") or lever.startswith("compile")
    return torch.backends.cudnn.flags(enabled=True, benchmark=autotune, deterministic=False)


class _Layout:
    """``nchw``: the step's layout helper answers plain NCHW for this lever's run."""

    def __init__(self, plain: bool) -> None:
        self.plain, self.saved = plain, step.memory_format

    def __enter__(self):
        if self.plain:
            step.memory_format = lambda device: torch.contiguous_format
        return self

    def __exit__(self, *exc):
        step.memory_format = self.saved


def _setup(name: str, px: int, device: torch.device):
    overrides, batch, precision = CONFIGS[name]
    params = load_params(ROOT / "params.yaml")
    pretrain = params.pretrain.model_copy(update={"batch_size": batch, "precision": precision})
    params = params.model_copy(update={"model": params.model.model_copy(update=overrides), "pretrain": pretrain})
    state = new_state(params, 1, Recipe.for_run(pretrain, IMAGES), device)
    gen = torch.Generator(device=device).manual_seed(0)
    images = [torch.randint(0, 256, (batch, 1, px, px), dtype=torch.uint8, device=device, generator=gen)
              for _ in range(4)]
    mean, std = torch.full((1,), 0.286, device=device), torch.full((1,), 0.353, device=device)
    augment = Augmenter.for_data(params.augment, px, mean, std, torch.Generator(device=device).manual_seed(0))
    return params, state, images, augment


def _rounds(fn, images, warmup: int, steps: int, rounds: int, device) -> list[float]:
    """Seconds per call of ``fn(batch)``, one figure per round of ``steps`` calls."""
    for i in range(warmup):
        fn(images[i % len(images)])
    out = []
    for _ in range(rounds):
        synchronize(device)
        started = time.perf_counter()
        for i in range(steps):
            fn(images[i % len(images)])
        synchronize(device)
        out.append((time.perf_counter() - started) / steps)
    return out


def _host_syncs(fn, batch, device) -> int | str | None:
    """0 when a call makes no host sync, else what torch said about the first one (it raises
    on one in this mode); None where not checkable (CPU)."""
    if device.type != "cuda":
        return None
    torch.cuda.set_sync_debug_mode("error")
    try:
        fn(batch)
    except RuntimeError as exc:
        return f"at least one: {str(exc).splitlines()[0][:120]}"
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return 0


def bench(name: str, lever: str, px: int, steps: int, warmup: int, rounds: int, device: torch.device) -> dict:
    with _cudnn(lever), _Layout(lever == "nchw"):
        params, state, images, augment = _setup(name, px, device)
        runner = train_step
        if lever.startswith("graph"):
            if not graphed.usable(device, 1, False):
                raise RuntimeError("CUDA graphs need a CUDA device")
            runner = graphed.GraphedStep()
        elif lever.startswith("compile"):
            mode = "max-autotune" if lever == "compile-max-autotune" else None
            state.forward = torch.compile(state.model, mode=mode)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)  # the peak: weights, optimizer, one step (or the graph's pool)
        started = time.perf_counter()
        runner(state, images[0], augment)  # the first call: capture or compile
        synchronize(device)
        first_s = time.perf_counter() - started
        times = _rounds(lambda b: runner(state, b, augment), images, warmup, steps, rounds, device)
        syncs = _host_syncs(lambda b: runner(state, b, augment), images[0], device)
        loss = float(runner(state, images[1], augment).loss)
    batch = CONFIGS[name][1]
    median = statistics.median(times)
    row = {"config": name, "lever": lever, "px": px, "batch": batch, "precision": CONFIGS[name][2],
           "width": params.model.width, "host_syncs_in_step": syncs, "first_call_s": round(first_s, 2),
           "step_ms_median": median * 1000, "images_per_sec": batch / median,
           "rounds_img_s": [round(batch / t) for t in times], "loss_after": loss}
    if device.type == "cuda":
        row["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return row


def augment_share(name: str, px: int, steps: int, rounds: int, device: torch.device, step_ms: float) -> dict:
    """Both views alone: eager, and on CUDA captured as a graph (as inside the graphed step)."""
    _, _, images, augment = _setup(name, px, device)
    eager = statistics.median(_rounds(augment, images, 3, steps, rounds, device)) * 1000
    out = {"config": name, "px": px, "two_views_eager_ms": eager, "step_ms": step_ms, "share_eager": eager / step_ms}
    if device.type == "cuda":
        static = images[0].clone()
        gen = torch.Generator(device=device).manual_seed(1)
        views = augment.reseeded(gen)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(3):
                views(static)
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        graph.register_generator_state(gen)
        with torch.cuda.graph(graph):
            views(static)
        graphed_ms = statistics.median(_rounds(lambda b: graph.replay(), images, 3, steps, rounds, device)) * 1000
        out.update(two_views_graph_ms=graphed_ms, share_graph=graphed_ms / step_ms)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--levers", default="eager",
                        help=f"comma-separated, measured in turn for each config: {', '.join(LEVERS)}")
    parser.add_argument("--px", default="28", help="image sides, comma-separated (Fashion-MNIST: 28)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    device = resolve_device(args.device)
    levers = args.levers.split(",")
    unknown = sorted(set(levers) - set(LEVERS))
    if unknown:
        sys.exit(f"pretrain_throughput: unknown lever(s) {', '.join(unknown)}; choose from {', '.join(LEVERS)}")
    rows, shares = [], []
    for name in args.configs.split(","):
        for px in (int(p) for p in args.px.split(",")):
            for lever in levers:
                try:
                    row = bench(name, lever, px, args.steps, args.warmup, args.rounds, device)
                except Exception as exc:  # one lever failing must not lose the others' figures
                    row = {"config": name, "lever": lever, "px": px, "error": f"{type(exc).__name__}: {exc}"[:300]}
                print(json.dumps(row), flush=True)
                rows.append(row)
            done = [r for r in rows if r["config"] == name and r["px"] == px and "error" not in r]
            if done:
                # Against the step pretraining runs (the graph), else the fastest measured.
                best = next((r for r in done if r["lever"] == "graph"), min(done, key=lambda r: r["step_ms_median"]))
                share = augment_share(name, px, args.steps, args.rounds, device, best["step_ms_median"])
                share["against_lever"] = best["lever"]
                print(json.dumps(share), flush=True)
                shares.append(share)
    path, record = write_results("pretrain_throughput", {"steps": args.steps, "warmup": args.warmup,
                                                         "rounds": args.rounds, "results": rows,
                                                         "augmentation": shares},
                                 device=device, tag=device.type, out=args.out, software=("torch",))
    m = record["machine"]
    where = m["gpu"] or f"{m['cpu']}, {torch.get_num_threads()} threads"
    print(f"\n{record['date'][:10]} - {where} - torch {torch.__version__} - commit {record['git']['commit']}\n")
    print("| config | px | lever | batch | precision | step ms (median) | img/s | gain vs previous | first call s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    previous = None
    for row in rows:
        if "error" in row:
            print(f"| {row['config']} | {row['px']} | {row['lever']} | - | - | - | failed: {row['error'][:80]} | - | - |")
            continue
        gain = "" if previous is None or previous["config"] != row["config"] or previous["px"] != row["px"] \
            else f"{previous['step_ms_median'] / row['step_ms_median']:.2f}x"
        print(f"| {row['config']} | {row['px']} | {row['lever']} | {row['batch']} | {row['precision']} "
              f"| {row['step_ms_median']:.2f} | {row['images_per_sec']:.0f} | {gain} | {row['first_call_s']:.1f} |")
        previous = row
    for s in shares:
        graph = f", captured {s['two_views_graph_ms']:.2f} ms = {100 * s['share_graph']:.1f}%" if "share_graph" in s else ""
        print(f"augmentation ({s['config']}, {s['px']} px): both views eager {s['two_views_eager_ms']:.2f} ms = "
              f"{100 * s['share_eager']:.1f}% of the {s['against_lever']} step ({s['step_ms']:.2f} ms){graph}")
    print(f"Record: {path}")


if __name__ == "__main__":
    main()
