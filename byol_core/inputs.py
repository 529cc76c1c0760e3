"""The encoder's input convention, in one place: uint8 pixels -> [0, 1] -> per-channel
standardised. Training views (augment.py), evaluation, export and the checks all use it,
and only it: a stage that feeds the encoder depends on this file, not on the augmentations.
"""

from __future__ import annotations

import torch


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) in [0, 1] -> per-channel standardised, the encoder's input convention."""
    return (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)


def to_input(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W) -> the encoder's float input, unaugmented (evaluation, export)."""
    return normalize(images.float() / 255.0, mean, std)
