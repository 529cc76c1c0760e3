"""The shipped ONNX encoder as a client sees it: the file, its input contract, and features.

The exported graph takes normalised float32 images ``images`` (batch, C, H, W) and returns
``features`` (batch, D). Everything a client needs to make that input from pixels is in the
file itself, in ``metadata_props`` (JSON values), so no sidecar or project code is needed:

  ``byol.preprocess``  {"scale": 1/255, "mean": [...], "std": [...], "channels": C,
                        "size": H, "colour": "L" | "RGB", "resize": ..., "formula": ...}:
                        ``images = (uint8_pixels * scale - mean[c]) / std[c]``, per channel,
                        on images converted to ``colour`` and brought to ``size`` x ``size``
  ``byol.data_hash``   the prepared data the encoder was trained on (its card's data_hash)
  ``byol.output_dim``  D; features are compared by cosine similarity

This module imports neither torch nor dagster: ``byol neighbours`` starts in a fraction of
a second, and what it computes is what was checked against PyTorch at export.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from byol_core.errors import ByolError, brief

PROVIDER_PREFERENCE = ("CUDAExecutionProvider", "CPUExecutionProvider")
PREPROCESS_KEY = "byol.preprocess"
RESIZE = "the short side to size with bicubic resampling (never upscaled), then a centre crop"


def preprocess_record(channels: int, size: int, mean: list[float], std: list[float]) -> dict:
    """The ``byol.preprocess`` record export writes into the file."""
    return {"scale": 1 / 255, "mean": [float(v) for v in mean], "std": [float(v) for v in std],
            "channels": channels, "size": size, "colour": "L" if channels == 1 else "RGB",
            "layout": "NCHW", "resize": RESIZE,
            "formula": "images[n, c] = (pixels[n, c] * scale - mean[c]) / std[c], pixels uint8"}


def _gpu_visible() -> bool:
    # The GPU build lists CUDA as available even on a host without a GPU, then logs an
    # error while falling back to CPU; so CUDA is only tried where the driver shows a GPU.
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    gpus = Path("/proc/driver/nvidia/gpus")
    return gpus.is_dir() and any(gpus.iterdir())


def open_session(path: Path):
    """An onnxruntime session on the first provider that actually works: CUDA, then CPU.
    Returns (session, provider used), read back from the session rather than assumed."""
    import onnx
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    if not _gpu_visible():
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


@dataclass(frozen=True)
class Encoder:
    """An onnxruntime session of the exported encoder with the input contract read from it."""

    session: object
    provider: str
    channels: int
    size: int
    mean: np.ndarray  # (1, C, 1, 1) float32
    std: np.ndarray
    dim: int
    data_hash: str
    path: Path

    @classmethod
    def open(cls, path: Path) -> Encoder:
        session, provider = open_session(path)
        props = session.get_modelmeta().custom_metadata_map
        fix = "It was exported by an older version: run `byol export` again."
        try:
            record = json.loads(props[PREPROCESS_KEY])
            channels, size = int(record["channels"]), int(record["size"])
            mean = np.asarray(record["mean"], dtype=np.float32).reshape(1, -1, 1, 1)
            std = np.asarray(record["std"], dtype=np.float32).reshape(1, -1, 1, 1)
            dim = int(props["byol.output_dim"])
        except (KeyError, ValueError, TypeError) as exc:
            raise ByolError(f"{path}: no usable input description in the model's metadata ({brief(exc, 80)}). "
                            f"{fix}") from None
        shape = session.get_inputs()[0].shape
        if mean.shape[1] != channels or std.shape[1] != channels or list(shape[1:]) != [channels, size, size]:
            raise ByolError(f"{path}: the model's metadata disagrees with its input shape {shape}. {fix}")
        return cls(session, provider, channels, size, mean, std, dim, props.get("byol.data_hash", ""), Path(path))

    def features(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 (N, C, H, W) -> l2-normalised float32 (N, D), through onnxruntime."""
        if pixels.shape[1:] != (self.channels, self.size, self.size):
            raise ByolError(f"{self.path} takes {self.channels}x{self.size}x{self.size} images, got "
                            f"{'x'.join(map(str, pixels.shape[1:]))}.")
        x = (pixels.astype(np.float32) / np.float32(255.0) - self.mean) / self.std
        out = self.session.run(["features"], {"images": np.ascontiguousarray(x, dtype=np.float32)})[0]
        return l2_normalise(out)


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero), float32."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, np.float32(1e-12))
