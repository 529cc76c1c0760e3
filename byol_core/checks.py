"""Measurements on the published artefacts, for an orchestrator's checks (or anyone's):
is the encoder collapsed, and does the ONNX file still compute what the PyTorch encoder does?
Both read only files the stages wrote; thresholds come from params.yaml's ``checks``."""

from __future__ import annotations

from pathlib import Path

import torch

from byol_core.train.byol import collapse_std
from byol_core.train.checkpoint import input_normalisation, load_encoder
from byol_core.data.prepared import load_prepared
from byol_core.export import check_parity
from byol_core.train.features import extract_features
from byol_core.inputs import to_input
from byol_core.onnxmodel import open_session


def _test_images(prepared_dir: Path, n: int) -> torch.Tensor:
    return torch.as_tensor(load_prepared(prepared_dir, ("test",)).images["test"][:n])


def feature_spread(encoder_path: Path, prepared_dir: Path, n_images: int) -> dict:
    """The collapse indicator (as in training: std over the batch of l2-normalised vectors,
    averaged over dimensions, times sqrt(dim)) of the encoder's eval-mode features on the
    first ``n_images`` test images: 0 when every image maps to the same direction."""
    encoder, _, info = load_encoder(encoder_path)
    mean, std = input_normalisation(info)
    images = _test_images(prepared_dir, n_images)
    features = extract_features(encoder, images, mean, std, 256, torch.device("cpu"))
    return {"feature_spread": float(collapse_std(features)), "n_images": len(images)}


def onnx_parity(onnx_path: Path, encoder_path: Path, prepared_dir: Path, n_images: int,
                atol: float, rtol: float) -> dict:
    """The ONNX file against the PyTorch encoder on the first ``n_images`` test images."""
    encoder, _, info = load_encoder(encoder_path)
    mean, std = input_normalisation(info)
    images = to_input(_test_images(prepared_dir, n_images), mean, std)
    session, provider = open_session(onnx_path)
    return {**check_parity(session, encoder, images, atol, rtol), "provider": provider, "n_images": len(images)}


def measure(what: str, params) -> dict:
    """``byol check collapse|parity``: the figures of one check on the files ``params`` names."""
    paths, n = params.paths, params.checks.images
    if what == "collapse":
        return feature_spread(paths.encoder, paths.prepared, n)
    return onnx_parity(paths.onnx, paths.encoder, paths.prepared, n, params.export.atol, params.export.rtol)
