"""The encoder file: what pretrain saves and later stages load (the full training state is
:mod:`byol_core.train.resume`'s).

It is a plain dict of tensors, numbers, strings and lists, so it loads with
``torch.load(..., weights_only=True)``, which refuses anything that would run code.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from byol_core.errors import ByolError
from byol_core.train.nets import EncoderSpec, ResNetEncoder, build_encoder
from byol_core.io.storage import load_torch, save_torch

ENCODER_FORMAT = 1


def encoder_record(encoder: torch.nn.Module, spec: EncoderSpec, input_info: dict) -> dict:
    """What the encoder file holds. ``input_info``: ``{"size", "mean", "std"}``, the input
    convention the encoder was trained on."""
    return {
        "format": ENCODER_FORMAT,
        "spec": spec.to_dict(),
        "input": input_info,
        "state_dict": {k: v.detach().cpu() for k, v in encoder.state_dict().items()},
    }


def save_encoder(path: Path, encoder: torch.nn.Module, spec: EncoderSpec, input_info: dict) -> None:
    save_torch(path, encoder_record(encoder, spec, input_info))


def load_encoder(path: Path) -> tuple[ResNetEncoder, EncoderSpec, dict]:
    """Rebuild the encoder from its saved spec and weights (on CPU, eval mode)."""
    fix = "Run `byol pretrain` to make it."
    blob = load_torch(path, "encoder file", fix)
    if not isinstance(blob, dict) or blob.get("format") != ENCODER_FORMAT:
        raise ByolError(f"{path} is not an encoder file of this version. {fix}")
    try:
        spec = EncoderSpec.from_dict(blob.get("spec"))
        info = _input_info(blob.get("input"), spec.in_channels)
    except ValueError as exc:
        raise ByolError(f"{path}: not a valid encoder file ({exc}). {fix}") from None
    weights = blob.get("state_dict")
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise ByolError(f"{path}: not a valid encoder file (its weights are not a dict of tensors). {fix}")
    bad = next((k for k, v in weights.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
    if bad is not None:
        raise ByolError(f"{path}: the weights of {str(bad)[:80]} are not finite (NaN or infinity): the training "
                        f"diverged or the file is damaged. {fix}")
    encoder = build_encoder(spec)
    try:
        encoder.load_state_dict(blob["state_dict"])
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise ByolError(f"{path}: weights do not fit the saved architecture {spec} ({lines[min(1, len(lines) - 1)]}). "
                        f"{fix}") from None
    return encoder.eval(), spec, info


def _input_info(info: object, channels: int) -> dict:
    """The encoder file's input record, checked: size, and a finite mean and a positive std
    per channel."""
    if not isinstance(info, dict):
        raise ValueError("it has no input record")
    size, mean, std = info.get("size"), info.get("mean"), info.get("std")
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= 65536:
        raise ValueError(f"input size {str(size)[:40]} is not an image size")
    for name, values in (("mean", mean), ("std", std)):
        if not isinstance(values, list) or len(values) != channels or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
            raise ValueError(f"input {name} is not {channels} finite numbers")
    if min(std) <= 0:
        raise ValueError("input std is not positive")
    return {"size": size, "mean": [float(v) for v in mean], "std": [float(v) for v in std]}


def input_normalisation(info: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (mean, std) tensors from an encoder file's ``input`` record."""
    return torch.tensor(info["mean"]), torch.tensor(info["std"])
