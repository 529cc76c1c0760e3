"""Warm start (``pretrain.init: previous``): pretraining that begins from an earlier run's
full training state instead of fresh weights.

``byol promote`` (byol_core.promote) copies pretrain's checkpoint to ``paths.start`` and
writes the copy's sha256 into params.yaml as ``pretrain.init_sha256``. That param is what
DVC sees: a new start changes pretrain's params (and its run-cache key), so a warm-started
run is a function of the weights it names, and :func:`read_start` refuses any other file.
Only the networks come from the start (online encoder, projector, predictor and the
target); the optimizer and the LR and tau schedules begin afresh.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from byol_core.train.byol import BYOL
from byol_core.train.resume import load_state
from byol_core.errors import ByolError, brief
from byol_core.schema.pretrain import ModelConfig

_FIX = ("Run `byol promote` (or `make promote`) to promote the last pretrain's state and write its digest, "
        "or `dvc pull` the promoted file that params.yaml names; or set pretrain.init: scratch.")


def file_sha256(path: Path) -> str:
    """The sha256 of the file's bytes, as lower-case hex."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _check_digest(path: Path, expected: str) -> None:
    if not path.is_file():
        raise ByolError(f"pretrain.init is previous but there is no start file at {path} (paths.start). {_FIX}")
    found = file_sha256(path)
    if found != expected:
        raise ByolError(f"{path}: its sha256 is {found}, but params.yaml's pretrain.init_sha256 is {expected}, "
                        f"so it is not the start this run names. {_FIX}")


def read_start(path: Path, sha256: str) -> dict:
    """The training state at ``path`` (as :func:`byol_core.train.resume.load_state` reads it),
    refused unless its bytes have the digest ``sha256``."""
    _check_digest(path, sha256)
    blob = load_state(path, _FIX)
    # Hashed again: a `byol promote` or `dvc checkout` could have replaced the file while it
    # was read, and the run must start from exactly the bytes its params name.
    _check_digest(path, sha256)
    return blob


def _differences(blob: dict, model: BYOL, config: ModelConfig) -> list[str]:
    """How the saved state's architecture differs from ``model``'s: its model section key by
    key, then the shapes of its tensors (which the data's image channels also set)."""
    params = blob.get("params")
    saved = params.get("model") if isinstance(params, dict) else None
    if not isinstance(saved, dict):
        return ["it records no model section"]
    differ = [f"model.{key}: {saved.get(key)!r} there, {value!r} here"
              for key, value in config.model_dump(mode="json").items() if saved.get(key) != value]
    if differ:
        return differ
    ours = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    theirs = {name: tuple(t.shape) for name, t in blob["model"].items() if isinstance(t, torch.Tensor)}
    if ours.keys() != theirs.keys():
        return [f"other tensors ({len(theirs)} there, {len(ours)} here)"]
    shapes = [f"{name}: shape {list(theirs[name])} there, {list(ours[name])} here"
              for name in ours if ours[name] != theirs[name]]
    return shapes[:3]


def start_from(model: BYOL, path: Path, sha256: str, config: ModelConfig) -> None:
    """Load the networks of the promoted state at ``path`` into ``model`` (online encoder,
    projector, predictor and target, bit for bit). Refused, naming the file, when its digest
    is not ``sha256`` or its architecture (``config``, and the image channels) differs."""
    blob = read_start(path, sha256)
    differ = _differences(blob, model, config)
    if differ:
        raise ByolError(f"{path}: the promoted state has another architecture than this run "
                        f"({'; '.join(differ)}). Set pretrain.init: scratch, or promote a run made with this "
                        "model section and data (`byol pretrain` with init: scratch, then `byol promote`).")
    try:
        model.load_state_dict(blob["model"])
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        raise ByolError(f"{path}: its weights do not fit this model ({brief(exc, 200)}). "
                        "Set pretrain.init: scratch, or promote a run made with this model section.") from None
