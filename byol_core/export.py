"""ONNX export of the online encoder, with a parity check against PyTorch in onnxruntime.

The model takes normalised float32 images ``images`` (batch, C, H, W) with a dynamic batch
axis and returns ``features`` (batch, D). How to normalise is in the model's own metadata
(see :mod:`byol_core.onnxmodel`) and, for people, in the JSON sidecar, so a consumer needs
nothing but the file.
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

from byol_core.io.storage import atomic_write


def export_onnx(encoder: torch.nn.Module, example: torch.Tensor, path: Path, opset: int, max_batch: int,
                metadata: dict[str, str], doc: str = "") -> None:
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
        model.doc_string = doc
        onnx.checker.check_model(model)
        onnx.save_model(model, str(tmp))

    atomic_write(path, write)


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
