"""What pretrain saves and later stages load: the encoder file and the full training state.

Both are plain dicts of tensors, numbers, strings and lists, so they load with
``torch.load(..., weights_only=True)``, which refuses anything that would run code.
"""

from __future__ import annotations

from pathlib import Path

import torch

from byol_core.errors import ByolError
from byol_core.nets import EncoderSpec, ResNetEncoder, build_encoder
from byol_core.storage import load_torch, save_torch

ENCODER_FORMAT = 1
STATE_FORMAT = 1


def save_encoder(path: Path, encoder: torch.nn.Module, spec: EncoderSpec, input_info: dict) -> None:
    """``input_info``: ``{"size", "mean", "std"}``, the input convention the encoder was trained on."""
    save_torch(path, {
        "format": ENCODER_FORMAT,
        "spec": spec.to_dict(),
        "input": input_info,
        "state_dict": {k: v.detach().cpu() for k, v in encoder.state_dict().items()},
    })


def load_encoder(path: Path) -> tuple[ResNetEncoder, EncoderSpec, dict]:
    """Rebuild the encoder from its saved spec and weights (on CPU, eval mode)."""
    fix = "Run `byol pretrain` to make it."
    blob = load_torch(path, "encoder file", fix)
    if not isinstance(blob, dict) or blob.get("format") != ENCODER_FORMAT:
        raise ByolError(f"{path} is not an encoder file of this version. {fix}")
    spec = EncoderSpec.from_dict(blob["spec"])
    encoder = build_encoder(spec)
    try:
        encoder.load_state_dict(blob["state_dict"])
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise ByolError(f"{path}: weights do not fit the saved architecture {spec} ({lines[min(1, len(lines) - 1)]}). "
                        f"{fix}") from None
    return encoder.eval(), spec, blob["input"]


def save_state(path: Path, state: dict) -> None:
    save_torch(path, {"format": STATE_FORMAT, **state})


def load_state(path: Path) -> dict:
    blob = load_torch(path, "training checkpoint",
                      "Delete it to start pretraining afresh.")
    if not isinstance(blob, dict) or blob.get("format") != STATE_FORMAT:
        raise ByolError(f"{path} is not a training checkpoint of this version. Delete it to start afresh.")
    return blob


def input_normalisation(info: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (mean, std) tensors from an encoder file's ``input`` record."""
    return torch.tensor(info["mean"]), torch.tensor(info["std"])
