"""The BYOL pretraining loop: resumable, one pass per epoch over the data, each batch
through :func:`byol_core.train.step.train_step`.

:func:`pretrain` reads in training order: set up (data, views, model, optimizer), resume,
wrap the model for DDP / torch.compile, then per epoch: train, measure, checkpoint. Step
metrics stay on the device; the loop reads them every ``log_every`` steps and at epoch
ends, so the device is synced only then.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from byol_core.train import distributed, graphed, loader, warmstart
from byol_core.train.augment import Augmenter
from byol_core.train.byol import BYOL
from byol_core.data.prepared import Prepared, spread
from byol_core.device import exact_kernels, synchronize
from byol_core.errors import ByolError
from byol_core.train.features import extract_features, knn_top1
from byol_core.train.resume import restore, run_key, save_state, saved_state, state_record
from byol_core.schema.pretrain import PretrainParams, Schedule
from byol_core.train.step import Recipe, StepMetrics, TrainState, new_state, train_step


def _epoch_generator(seed: int, epoch: int, stream: int, device: torch.device) -> torch.Generator:
    """Each epoch's randomness comes from (seed, epoch, stream) alone, so a run resumed at
    an epoch boundary draws exactly what the uninterrupted run drew."""
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + epoch * 7 + stream)


def _check_finite(value: torch.Tensor, state: TrainState, resume_path: Path, what: str = "the loss") -> None:
    if not torch.isfinite(value):
        raise ByolError(
            f"pretrain: {what} became {float(value)} by step {state.step} (epoch {state.epoch + 1}). "
            f"The last good checkpoint, if any, is intact at {resume_path}. Lower pretrain.base_lr, "
            "raise pretrain.warmup_epochs or use precision: fp32, then run again.")


@dataclass(frozen=True)
class Monitor:
    """A small labelled set for the per-epoch kNN top-1: bank from train, queries from test."""

    bank: np.ndarray
    bank_labels: np.ndarray
    queries: np.ndarray
    query_labels: np.ndarray
    num_classes: int

    @classmethod
    def from_prepared(cls, prepared: Prepared, bank: int, queries: int) -> Monitor:
        """Evenly spaced images of each split, so a split stored class by class (an image
        folder, in path order) still gives every class its share."""
        bank_idx, query_idx = (spread(len(prepared.labels[s]), n) for s, n in (("train", bank), ("test", queries)))
        return cls(prepared.images["train"].take(bank_idx), prepared.labels["train"][bank_idx],
                   prepared.images["test"].take(query_idx), prepared.labels["test"][query_idx],
                   len(prepared.card.classes))

    def knn_top1(self, encoder, mean, std, params: PretrainParams, device) -> float:
        batch = params.evaluate.batch_size
        bank = extract_features(encoder, self.bank, mean, std, batch, device)
        queries = extract_features(encoder, self.queries, mean, std, batch, device)
        return knn_top1(bank, self.bank_labels, queries, self.query_labels, self.num_classes, params.knn)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def _silent(line: str) -> None:
    pass


@dataclass(frozen=True)
class _Run:
    """What stays fixed while a pretraining run goes through its epochs."""

    params: PretrainParams
    device: torch.device
    world: distributed.World
    log: Callable[[str], None]
    batches: loader.Resident | loader.Streamed  # the pretraining images, resident or streamed
    n_images: int
    views: Augmenter  # without a generator: each epoch brings its own
    monitor: Monitor
    key: str  # resume.run_key: which saved state this run may continue
    resume_path: Path
    start: Path  # where a warm start (pretrain.init: previous) begins from


def _set_up(params: PretrainParams, prepared: Prepared, device: torch.device, world: distributed.World,
            log: Callable[[str], None]) -> tuple[_Run, Recipe]:
    """The run's fixed parts, and its recipe: steps and peak LR follow from the number of
    pretraining images, so an impossible batch size is refused before anything is built."""
    cfg, card = params.pretrain, prepared.card
    source = prepared.pretrain_images
    recipe = Recipe.for_run(cfg, len(source))
    mean = torch.tensor(card.mean, device=device)
    std = torch.tensor(card.std, device=device)
    views = Augmenter.for_data(params.augment, card.height, mean, std, shard=world.shard)
    monitor = Monitor.from_prepared(prepared, cfg.monitor_bank, cfg.monitor_queries)
    batches = loader.for_data(source, device, cfg.resident_max_mb)
    log(f"pretrain: {len(source)} images ({source.nbytes / 2**20:.0f} MiB), {batches.name} on {device}")
    run = _Run(params, device, world, log, batches, len(source), views, monitor,
               run_key(params, card.data_hash, device), params.paths.resume_state, params.paths.start)
    return run, recipe


def _resume(state: TrainState, run: _Run) -> bool:
    """Continue from the saved state when it was made under this run's key (True); otherwise
    start afresh, and say why. Rank 0 wrote the state, so rank 0 reads it and sends it to every
    rank: on several nodes the others have no copy (or an old one), and every rank must resume
    from the same epoch or their collectives no longer pair up."""
    blob = distributed.from_rank0(lambda: saved_state(run.resume_path, run.key, run.log))
    if blob is None:
        return False
    restore(state, blob, run.resume_path)
    run.log(f"pretrain: resuming from {run.resume_path} after epoch {state.epoch} (step {state.step})")
    return True


def _check_ranks_agree(run: _Run, data_hash: str) -> None:
    """Every rank must train the same run: the same weight-shaping params and data (each node
    reads its own copy), and the same log and checkpoint intervals (each is a meeting of all
    ranks). A difference would make the ranks' collectives stop pairing up: they would hang
    or mix unrelated tensors, so stop with an error instead."""
    cfg = run.params.pretrain
    mine = {"prepared data (paths.prepared)": data_hash,
            "params (seed, model, augment or pretrain)": run_key(run.params, "", run.device),
            "pretrain.log_every": cfg.log_every, "pretrain.checkpoint_every": cfg.checkpoint_every}
    every = distributed.gather(mine)
    for rank, theirs in enumerate(every):
        apart = [what for what in mine if theirs[what] != every[0][what]]
        if apart:
            raise ByolError(f"pretrain: rank {rank} has other {', '.join(apart)} than rank 0. Every node must train "
                            "from the same params.yaml and the same prepared data (`dvc pull`, or `byol ingest` from "
                            "the same source): make them equal, then run `byol pretrain` again on every node.")


def _warm_start(state: TrainState, run: _Run) -> None:
    """Begin from the promoted state's networks (pretrain.init: previous); the optimizer and
    the step count stay fresh, so LR and tau follow the warm run's own schedules."""
    cfg = run.params.pretrain
    warmstart.start_from(state.model, run.start, cfg.init_sha256, run.params.model)
    run.log(f"pretrain: warm start from {run.start} (sha256 {cfg.init_sha256[:12]}...): {cfg.run_epochs} epochs, "
            f"{cfg.run_warmup_epochs:.3g} of them warmup")


def _forward(model: BYOL, device: torch.device, world: distributed.World, compiled: bool) -> nn.Module | None:
    """What the step calls instead of the bare model (None: the model itself): DDP's wrapper
    across processes, torch.compile's when asked. Made after the restore, as DDP starts
    every rank from rank 0's weights (identical anyway)."""
    forward = distributed.wrap(model, device) if world.size > 1 else None
    if compiled:
        forward = torch.compile(model if forward is None else forward)
    return forward


class _Tally:
    """One epoch's running sums of the step metrics, kept on the device, and a progress row
    (state.steps) per log interval: each costs one host sync and, across processes, the
    all-reduces that keep every rank stopping together."""

    def __init__(self, device: torch.device) -> None:
        self.loss = torch.zeros((), device=device)
        self.collapse = torch.zeros((), device=device)
        self.last: StepMetrics | None = None
        self.logged = (0, 0.0, 0.0)  # (steps, loss sum, collapse sum) at the last log point, over ranks

    def add(self, metrics: StepMetrics) -> None:
        self.loss += metrics.loss
        self.collapse += metrics.collapse_std
        self.last = metrics

    def log_point(self, state: TrainState, run: _Run, done: int, epoch: float, rate: float) -> float:
        """Append the progress row of the steps since the last log point (``done`` steps
        into the epoch); returns the epoch's mean loss so far."""
        mean_loss = distributed.mean_over_ranks(self.loss)
        _check_finite(mean_loss, state, run.resume_path)
        sums = (float(mean_loss), float(distributed.mean_over_ranks(self.collapse)))
        interval = done - self.logged[0]
        state.steps.append({"step": state.step, "epoch": epoch,
                            "loss": (sums[0] - self.logged[1]) / interval, "lr": self.last.lr, "tau": self.last.tau,
                            "collapse_std": (sums[1] - self.logged[2]) / interval, "images_per_sec": rate})
        self.logged = (done, *sums)
        return sums[0] / done


def _train_epoch(state: TrainState, run: _Run, epoch: int,
                 graph: graphed.GraphedStep | None = None) -> tuple[_Tally, float]:
    """One pass over the data in this epoch's own order, with this epoch's own view draws,
    each step eager or through ``graph``. Returns the epoch's tally and its wall time in seconds."""
    cfg, device, world = run.params.pretrain, run.device, run.world
    steps = state.recipe.schedule.steps_per_epoch
    order_gen = _epoch_generator(run.params.seed, epoch, 0, device)
    augment = run.views.reseeded(_epoch_generator(run.params.seed, epoch, 1, device))
    order = torch.randperm(run.n_images, generator=order_gen, device=device)
    state.model.train()
    tally = _Tally(device)
    bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{cfg.run_epochs}", unit="step",
               disable=None if world.is_main else True, leave=False, file=sys.stderr)
    started = time.perf_counter()
    local = cfg.batch_size // world.size  # this rank's slice of each global batch
    with contextlib.closing(run.batches.batches(order, steps, cfg.batch_size, local, world.rank)) as epoch_batches:
        for i, images in enumerate(epoch_batches):
            tally.add((graph or train_step)(state, images, augment))
            if (i + 1) % cfg.log_every == 0 or i + 1 == steps:
                rate = (i + 1) * cfg.batch_size / (time.perf_counter() - started)
                mean_loss = tally.log_point(state, run, i + 1, round(epoch + (i + 1) / steps, 4), rate)
                bar.set_postfix(loss=f"{mean_loss:.4f}", img_s=f"{rate:.0f}")
                bar.update((i + 1) - bar.n)
    synchronize(device)
    seconds = time.perf_counter() - started
    bar.close()
    return tally, seconds


def _epoch_row(state: TrainState, run: _Run, tally: _Tally, seconds: float) -> dict:
    """The epoch's line of the training curve, with the kNN monitor on the online encoder."""
    steps = state.recipe.schedule.steps_per_epoch
    views = run.views  # its mean and std: the data's normalisation, for the monitor too
    return {
        "epoch": state.epoch, "step": state.step,
        # The epoch's last step is always a log point: its sums are the epoch's, already reduced.
        "loss": tally.logged[1] / steps,
        "lr": tally.last.lr, "tau": tally.last.tau,
        "collapse_std": tally.logged[2] / steps,
        "knn_top1": run.monitor.knn_top1(state.model.encoder, views.mean, views.std, run.params, run.device),
        "images_per_sec": steps * run.params.pretrain.batch_size / seconds,
        "seconds": seconds,
    }


def _checkpoint(state: TrainState, run: _Run) -> None:
    """Save the full state for a resume (rank 0 writes; every rank waits for it)."""
    # The loss is computed before the last update: check the weights themselves too.
    weight_norm = torch.stack(torch._foreach_norm(list(state.model.parameters()))).sum()
    _check_finite(weight_norm, state, run.resume_path, "the weight norm")
    if run.world.is_main:
        save_state(run.resume_path, state_record(state, run.key, run.params))
    distributed.barrier()  # no rank runs ahead of the state it would resume from


def pretrain(params: PretrainParams, prepared: Prepared, device: torch.device, log: Callable[[str], None] = _stderr,
             world: distributed.World = distributed.World()) -> tuple[TrainState, Schedule]:
    """Train BYOL on the prepared pretraining images, resuming from ``paths.resume_state``
    when it was made under the same params and data, else beginning from ``paths.start``
    when ``pretrain.init`` is previous, else from fresh weights. Returns the final state and
    the schedule. Under DDP (``world.size > 1``) every rank calls this; rank 0 alone logs
    and writes the resume state."""
    cfg = params.pretrain
    exact_kernels(device)
    run, recipe = _set_up(params, prepared, device, world, log if world.is_main else _silent)
    _check_ranks_agree(run, prepared.card.data_hash)
    state = new_state(params, prepared.card.channels, recipe, device, world)
    if not _resume(state, run) and cfg.warm:
        _warm_start(state, run)
    state.forward = _forward(state.model, device, world, cfg.compile)
    graph = graphed.for_run(cfg, device, world.size)
    if graph is not None:
        run.log("pretrain: the training step runs as one CUDA graph (pretrain.cuda_graph)")

    for epoch in range(state.epoch, cfg.run_epochs):
        tally, seconds = _train_epoch(state, run, epoch, graph)
        state.epoch = epoch + 1
        row = _epoch_row(state, run, tally, seconds)
        state.history.append(row)
        run.log(f"epoch {state.epoch}/{cfg.run_epochs}  loss {row['loss']:.4f}  lr {row['lr']:.4g}  "
                f"tau {row['tau']:.5f}  collapse {row['collapse_std']:.3f}  knn {row['knn_top1']:.4f}  "
                f"{row['images_per_sec']:.0f} img/s")
        if state.epoch % cfg.checkpoint_every == 0 or state.epoch == cfg.run_epochs:
            _checkpoint(state, run)

    if world.size > 1:
        run.log(f"pretrain: all {world.size} ranks hold identical online and target weights "
                f"(hash {distributed.check_in_step(state.model)})")
    return state, recipe.schedule
