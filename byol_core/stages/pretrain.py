"""pretrain: BYOL on the prepared train split -> encoder, full checkpoint, metrics, curve."""

from __future__ import annotations

import csv
import io
import shutil
import time

from byol_core import data, distributed
from byol_core.checkpoint import save_encoder
from byol_core.config import Params
from byol_core.device import resolve_device
from byol_core.nets import count_parameters
from byol_core.storage import atomic_write, write_json, write_text
from byol_core.train import pretrain

PARAMS = ("seed", "device", "paths.prepared", "paths.models", "paths.metrics", "paths.resume",
          "model", "augment", "pretrain", "knn", "evaluate.batch_size")


def _curve_csv(history: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(history[0]))
    writer.writeheader()
    writer.writerows(history)
    return out.getvalue()


def run(params: Params) -> tuple[str, dict]:
    """Under torchrun every rank runs this; rank 0 alone writes the outputs."""
    prepared = data.load_prepared(params.paths.prepared)
    device = resolve_device(params.device)
    world = distributed.current()
    if world.size > 1:
        world, device = distributed.setup(device.type)
    started = time.perf_counter()
    try:
        state, schedule = pretrain(params, prepared, device, world=world)
    finally:
        distributed.teardown()
    if not world.is_main:
        return "", {}
    card = prepared.card
    encoder = state.model.encoder
    save_encoder(params.paths.encoder, encoder, state.model.spec,
                 {"size": card["height"], "mean": card["mean"], "std": card["std"]})
    # The loop always checkpoints its last epoch, so the resume state *is* the final full
    # state: publish a copy of it rather than serialising the same state again.
    resume = params.paths.resume_state
    atomic_write(params.paths.checkpoint, lambda tmp: shutil.copyfile(resume, tmp))
    history = state.history
    last = history[-1]
    total_images = sum(row["images_per_sec"] * row["seconds"] for row in history)
    metrics = {
        "final_loss": last["loss"],
        "epochs": last["epoch"],
        "steps": state.step,
        "total_steps": schedule.total_steps,
        "peak_lr": schedule.peak_lr,
        "images_per_sec": total_images / sum(row["seconds"] for row in history),
        "collapse_std": last["collapse_std"],
        "knn_top1": last["knn_top1"],
        "encoder_parameters": count_parameters(encoder),
        "device": str(device),
    }
    write_json(params.paths.pretrain_metrics, metrics)
    write_text(params.paths.pretrain_curve, _curve_csv(history))
    resume.unlink()  # finished: nothing left to resume
    line = (f"pretrain: {metrics['epochs']} epochs, {state.step} steps on {device} in "
            f"{time.perf_counter() - started:.0f}s, loss {metrics['final_loss']:.4f}, "
            f"collapse {metrics['collapse_std']:.3f}, knn {metrics['knn_top1']:.4f}, "
            f"{metrics['images_per_sec']:.0f} img/s -> {params.paths.encoder}")
    return line, metrics
