"""ONNX encoder inference speed with onnxruntime on CPU: img/s at batch 1 and 256.

    python benchmarks/onnx_inference.py [--model models/encoder.onnx] [--batches 1,256] [--repeats 7]

Uses models/encoder.onnx (what `byol export` wrote) when it exists, else exports a fresh,
untrained encoder of params.yaml's model (default width) through byol_core.export into a
temporary folder. Inputs are random normalised float32 images of the model's own input
shape (speed does not depend on the values). For each batch size: ``repeats`` timed
loops of ``calls`` session runs after a warm-up; img/s = images / loop time, median over
the loops. Prints a Markdown table and writes a JSON record to --out.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from record import write_results  # noqa: E402


def fresh_export(folder: Path) -> tuple[Path, str]:
    import torch

    from byol_core.config import load_params
    from byol_core.export import export_onnx
    from byol_core.train.nets import build_encoder
    from byol_core.train.step import encoder_spec

    params = load_params(ROOT / "params.yaml")
    spec = encoder_spec(params, in_channels=1)  # Fashion-MNIST: 1 x 28 x 28
    torch.manual_seed(params.seed)
    encoder = build_encoder(spec).eval()
    path = folder / "encoder.onnx"
    export_onnx(encoder, torch.randn(2, 1, 28, 28), path, params.export.opset, params.export.max_batch, {})
    return path, f"fresh untrained export of params.yaml's encoder ({spec.arch}, width {spec.width}, small stem {spec.small_stem})"


def bench(session, shape: list[int], batch: int, calls: int, repeats: int) -> dict:
    x = np.random.default_rng(0).standard_normal((batch, *shape[1:]), dtype=np.float32)
    feed = {session.get_inputs()[0].name: x}
    for _ in range(max(3, calls // 10)):  # warm-up
        session.run(None, feed)
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(calls):
            session.run(None, feed)
        rates.append(calls * batch / (time.perf_counter() - started))
    median = statistics.median(rates)
    return {"batch": batch, "calls_per_repeat": calls, "img_s_runs": [round(r, 1) for r in rates],
            "img_s_median": round(median, 1), "ms_per_call": 1000 * batch / median}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models/encoder.onnx")
    parser.add_argument("--batches", default="1,256")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=1.0, help="rough length of one timed loop")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: onnxruntime's default)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results")
    args = parser.parse_args()

    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        if args.model.is_file():
            path, origin = args.model, f"{args.model.relative_to(ROOT) if args.model.is_relative_to(ROOT) else args.model}"
        else:
            print(f"onnx_inference: {args.model} not found; exporting a fresh encoder", file=sys.stderr)
            path, origin = fresh_export(Path(tmp))
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = args.threads
        session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        shape = session.get_inputs()[0].shape  # ['batch', C, H, W]
        results = []
        for batch in (int(b) for b in args.batches.split(",")):
            # Size the loops to ~--seconds each from one probe call.
            probe = bench(session, shape, batch, 3, 1)
            calls = max(3, int(args.seconds * probe["img_s_median"] / batch))
            results.append(bench(session, shape, batch, calls, args.repeats))

    out, record = write_results("onnx_inference", {
        "model": {"source": origin, "sha256_16": digest, "input_shape": shape,
                  "output_shape": session.get_outputs()[0].shape},
        "provider": session.get_providers()[0], "intra_op_threads": args.threads or "default",
        "results": results}, out=args.out, software=("onnxruntime",))

    print(f"\n{record['date'][:10]} - {record['machine']['cpu']}, {record['machine']['cores']} cores - "
          f"onnxruntime {ort.__version__} ({record['provider']}) - {origin}, input {shape} - "
          f"commit {record['git']['commit']}\n")
    print("| batch | img/s (median) | runs | ms per call |")
    print("| --- | --- | --- | --- |")
    for r in results:
        runs = ", ".join(f"{x:.0f}" for x in r["img_s_runs"])
        print(f"| {r['batch']} | **{r['img_s_median']:.0f}** | {runs} | {r['ms_per_call']:.2f} |")
    print(f"Record: {out}")


if __name__ == "__main__":
    main()
