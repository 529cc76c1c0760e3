"""Crash-resume of pretraining, in one place: which saved state a run may continue (the run
key), what the state file holds (a :class:`~byol_core.train.step.TrainState` with its key and
params), how it is saved and loaded, and how a run picks it up.

The state is saved at ``paths.resume_state`` (outside every DVC output) after each
``pretrain.checkpoint_every`` epochs and at the last one; pretrain's ``checkpoint.pt`` and a
promoted start (``paths.start``) are copies of it. It is a plain dict of tensors, numbers,
strings and lists, so it loads with ``torch.load(..., weights_only=True)``, which refuses
anything that would run code.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from byol_core.errors import ByolError, brief
from byol_core.schema.base import same_weights
from byol_core.io.storage import load_torch, remove_stale_temps, save_torch

if TYPE_CHECKING:
    from byol_core.schema.pretrain import PretrainParams
    from byol_core.train.step import TrainState

STATE_FORMAT = 1


def run_key(params: PretrainParams, data_hash: str, device: torch.device) -> str:
    """A hash of everything that shapes the trained weights (params, data, device type):
    a resume state is only ever continued under the same key, so a stale state never
    leaks into another run. The fields the schema marks SAME_WEIGHTS (logging, monitoring,
    the process count, resident or streamed data) are left out, so changing them does not
    throw away a half-finished run. A warm start's init, init_sha256 and warm_epochs are
    pretrain keys, so a state is only continued from the start it began from."""
    sections = ("model", "augment", "pretrain")
    shaping = params.model_dump(mode="json", include={"seed", *sections})
    for name in sections:
        for knob in same_weights(type(getattr(params, name))):
            shaping[name].pop(knob)
    blob = json.dumps({"params": shaping, "data": data_hash, "device": device.type}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def state_record(state: TrainState, key: str, params: PretrainParams) -> dict:
    """What the state file holds of ``state``: its networks, optimizer, counters, curves and
    random number generators, the run key and the resolved params it was trained under."""
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return {"run_key": key, "step": state.step, "epoch": state.epoch, "history": state.history, "steps": state.steps,
            "model": state.model.state_dict(), "optimizer": state.optimizer.state_dict(),
            "rng": rng, "params": params.model_dump(mode="json")}


def restore(state: TrainState, blob: dict, path: Path) -> None:
    """Put the record ``blob`` (read from ``path``) back into ``state``, refused with a fix
    when it does not fit the model."""
    try:
        state.model.load_state_dict(blob["model"])
        state.optimizer.load_state_dict(blob["optimizer"])
        state.step, state.epoch, state.history = int(blob["step"]), int(blob["epoch"]), list(blob["history"])
        state.steps = list(blob.get("steps", []))
        torch.set_rng_state(blob["rng"]["cpu"])
        if "cuda" in blob["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(blob["rng"]["cuda"])
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise ByolError(f"{path}: the saved training state does not fit this model "
                        f"({brief(exc, 200)}). Delete it to start afresh.") from None


def save_state(path: Path, record: dict) -> None:
    save_torch(path, {"format": STATE_FORMAT, **record})


def load_state(path: Path, fix: str = "Delete it to start pretraining afresh.") -> dict:
    """The full training state at ``path`` (a resume state, or pretrain's checkpoint and a
    promoted copy of it), refused with ``fix`` unless it is one of this version."""
    blob = load_torch(path, "training checkpoint", fix)
    if not isinstance(blob, dict) or blob.get("format") != STATE_FORMAT or not _state_shape_ok(blob):
        raise ByolError(f"{path} is not a training checkpoint of this version. {fix}")
    return blob


def _state_shape_ok(blob: dict) -> bool:
    """The keys and types :func:`restore` relies on."""
    kinds = {"run_key": str, "step": int, "epoch": int, "history": list, "model": dict, "optimizer": dict,
             "rng": dict}
    return all(isinstance(blob.get(key), kind) and not isinstance(blob.get(key), bool) for key, kind in kinds.items()) \
        and isinstance(blob["rng"].get("cpu"), torch.Tensor) and blob["step"] >= 0 and blob["epoch"] >= 0


def saved_state(path: Path, key: str, log: Callable[[str], None]) -> dict | None:
    """The state saved at ``path`` when it was made under ``key``; otherwise None, and say
    why. Temp files of a save that a kill cut short are removed first (only the run that
    writes ``path`` calls this, so no other writer can be using them)."""
    for stale in remove_stale_temps(path):
        log(f"pretrain: removed {stale.name}, a checkpoint cut short by a killed run")
    if not path.is_file():
        return None
    blob = load_state(path)
    if blob.get("run_key") != key:
        log(f"pretrain: ignoring {path}: it was made under other params or data "
            f"(key {blob.get('run_key')} != {key}); starting fresh")
        return None
    return blob
