"""ONNX export of the online encoder, with a parity check against PyTorch in onnxruntime.

The model takes normalised float32 images ``images`` (batch, C, H, W) with a dynamic batch
axis and returns ``features`` (batch, D). How to normalise is in the JSON sidecar and in
the model's own metadata, so a consumer needs nothing else.
"""

from __future__ import annotations

import logging
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

from byol_core.errors import ByolError, brief
from byol_core.storage import atomic_write

PROVIDER_PREFERENCE = ("CUDAExecutionProvider", "CPUExecutionProvider")


def export_onnx(encoder: torch.nn.Module, example: torch.Tensor, path: Path, opset: int, max_batch: int,
                metadata: dict[str, str]) -> None:
    """Export ``encoder`` (eval mode, on CPU) to one self-contained ``.onnx`` file at ``path``.

    Eval mode folds BatchNorm into the convolutions. ``example`` (B, C, H, W) fixes every
    axis but the batch."""
    encoder = encoder.eval().cpu()
    batch = torch.export.Dim("batch", min=1, max=max_batch)

    def write(tmp: Path) -> None:
        onnx_log = logging.getLogger("torch.onnx")
        level = onnx_log.level
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            onnx_log.setLevel(logging.ERROR)  # the exporter narrates each pass at INFO
            try:
                program = torch.onnx.export(encoder, (example,), dynamo=True, opset_version=opset,
                                            input_names=["images"], output_names=["features"],
                                            dynamic_shapes=({0: batch},), external_data=False, verbose=False)
            finally:
                onnx_log.setLevel(level)
        model = program.model_proto
        for key, value in metadata.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.checker.check_model(model)
        onnx.save_model(model, str(tmp))

    atomic_write(path, write)


def open_session(path: Path):
    """An onnxruntime session on the first provider that actually works: CUDA, then CPU.
    Returns (session, provider used), read back from the session rather than assumed."""
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    # The GPU build lists CUDA as available even on a host without a GPU, then logs an
    # error while falling back to CPU; so CUDA is only tried where a GPU is visible.
    if not torch.cuda.is_available():
        available.discard("CUDAExecutionProvider")
    wanted = [p for p in PROVIDER_PREFERENCE if p in available]
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if not Path(path).is_file():
        raise ByolError(f"{path}: no ONNX model there. Run `byol export` to make it.")
    try:  # parse and check the graph in Python first: damaged bytes never reach the native runtime
        onnx.checker.check_model(str(path))
        session = ort.InferenceSession(str(path), sess_options=options, providers=wanted)
    except Exception as exc:
        raise ByolError(f"{path}: not a usable ONNX model ({brief(exc) or type(exc).__name__}). "
                        "Run `byol export` again.") from None
    return session, session.get_providers()[0]


def check_parity(session, encoder: torch.nn.Module, images: torch.Tensor, atol: float, rtol: float) -> dict:
    """Run the same normalised images (B, C, H, W) through PyTorch (fp32, CPU) and onnxruntime."""
    with torch.no_grad():
        expected = encoder.eval().cpu()(images).numpy()
    got = session.run(["features"], {"images": images.numpy()})[0]
    if got.shape != expected.shape:
        return {"max_abs_diff": float("inf"), "parity_ok": False}
    return {"max_abs_diff": float(np.abs(got - expected).max()),
            "parity_ok": bool(np.allclose(got, expected, atol=atol, rtol=rtol))}


def measure_latency(session, images: np.ndarray, repeats: int = 20) -> dict:
    """Median wall time of one session run at batch 1 and at the full batch given."""
    result = {}
    for name, batch in (("latency_ms_batch1", images[:1]), (f"latency_ms_batch{len(images)}", images)):
        session.run(["features"], {"images": batch})  # warm-up
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            session.run(["features"], {"images": batch})
            times.append((time.perf_counter() - started) * 1000)
        result[name] = statistics.median(times)
    return result
