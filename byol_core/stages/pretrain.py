"""pretrain: BYOL on the prepared train split -> encoder, full checkpoint, metrics, curve."""

from __future__ import annotations

import io
import shutil
import time

from byol_core import csvfile, metrics, progress

from byol_core.data.prepared import load_prepared

from byol_core.train import distributed
from byol_core.train.checkpoint import encoder_record
from byol_core.device import resolve_device
from byol_core.train.nets import count_parameters
from byol_core.schema.pretrain import PretrainParams
from byol_core.io.storage import StageCommit, text_writer, torch_writer
from byol_core.train.loop import pretrain

VIEW = PretrainParams  # the params keys this stage reads (dvc.yaml's params: list)


def _curve_csv(history: list[dict]) -> str:
    out = io.StringIO()
    fields = list(history[0])
    writer = csvfile.writer(out)
    writer.writerow(fields)
    writer.writerows([row.get(field, "") for field in fields] for row in history)
    return out.getvalue()


def run(params: PretrainParams) -> tuple[str, dict]:
    """Under torchrun every rank runs this; rank 0 alone writes the outputs."""
    outputs = StageCommit("pretrain", params.paths.models)
    if distributed.current().is_main:
        outputs.recover()
    prepared = load_prepared(params.paths.prepared)
    device = resolve_device(params.device)
    world = distributed.current()
    if world.size > 1:
        world, device = distributed.setup(device.type)
    started = time.perf_counter()
    try:
        state, schedule = pretrain(params, prepared, device, log=progress.report, world=world)
    except RuntimeError as exc:
        lost = distributed.lost_peer(exc) if world.size > 1 else None
        if lost is None:
            raise
        raise lost from None
    finally:
        distributed.teardown()
    if not world.is_main:
        return "", {}
    card, cfg = prepared.card, params.pretrain
    encoder = state.model.encoder
    history = state.history
    last = history[-1]
    total_images = sum(row["images_per_sec"] * row["seconds"] for row in history)
    train_seconds = sum(row["seconds"] for row in history)  # every epoch's steps, across resumes
    figures = metrics.PretrainMetrics(
        final_loss=last["loss"],
        epochs=last["epoch"],
        steps=state.step,
        total_steps=schedule.total_steps,
        peak_lr=schedule.peak_lr,
        images_per_sec=total_images / train_seconds,
        train_seconds=train_seconds,
        collapse_std=last["collapse_std"],
        knn_top1=last["knn_top1"],
        encoder_parameters=count_parameters(encoder),
        device=str(device),
        init=cfg.init,  # scratch, or previous: began from the promoted state with this digest
        init_sha256=cfg.init_sha256 if cfg.warm else None,
    )
    # The loop always checkpoints its last epoch, so the resume state *is* the final full
    # state: publish a copy of it rather than serialising the same state again. The four
    # outputs change together (a kill mid-way is completed by the next run).
    resume = params.paths.resume_state
    # Lists, as the encoder file has always held them (its bytes are a DVC output).
    record = encoder_record(encoder, state.model.spec,
                            {"size": card.height, "mean": list(card.mean), "std": list(card.std)})
    outputs.write([(params.paths.encoder, torch_writer(record)),
                   (params.paths.checkpoint, lambda tmp: shutil.copyfile(resume, tmp)),
                   (params.paths.pretrain_metrics, metrics.writer(figures)),
                   (params.paths.pretrain_curve, text_writer(_curve_csv(history))),
                   (params.paths.pretrain_steps, text_writer(_curve_csv(state.steps)))])
    resume.unlink()  # finished: nothing left to resume
    begun = " from the promoted state" if cfg.warm else ""
    line = (f"pretrain: {figures.epochs} epochs{begun}, {state.step} steps on {device} in "
            f"{time.perf_counter() - started:.0f}s, loss {figures.final_loss:.4f}, "
            f"collapse {figures.collapse_std:.3f}, knn {figures.knn_top1:.4f}, "
            f"{figures.images_per_sec:.0f} img/s -> {params.paths.encoder}")
    return line, metrics.to_json(figures)
