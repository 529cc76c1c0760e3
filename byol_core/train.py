"""The BYOL pretraining loop: one step function, one loop, resumable checkpoints.

Order of one step (as in the paper's reference code): set LR -> make both views ->
forward online and target -> loss -> backward -> LARS step -> EMA update of the target.
The step returns its metrics as device tensors; the loop decides when to read them,
so the device is synced only every ``log_every`` steps and at epoch ends.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from byol_core import distributed, loader
from byol_core.augment import ViewSpec, byol_views, make_view
from byol_core.byol import BYOL, collapse_std, target_tau
from byol_core.checkpoint import load_state, save_state
from byol_core.config import Params, Schedule, derive_schedule
from byol_core.data import Prepared, spread
from byol_core.device import autocast, free_memory, memory_format, synchronize
from byol_core.errors import ByolError, brief
from byol_core.features import extract_features, knn_top1
from byol_core.nets import EncoderSpec
from byol_core.optim import LARS, lr_at, param_groups
from byol_core.storage import remove_stale_temps


def encoder_spec(params: Params, in_channels: int) -> EncoderSpec:
    m = params.model
    return EncoderSpec(arch=m.arch, width=m.width, in_channels=in_channels, small_stem=m.small_stem)


def build_model(params: Params, in_channels: int) -> BYOL:
    torch.manual_seed(params.seed)
    m = params.model
    return BYOL(encoder_spec(params, in_channels), m.projector_hidden, m.projector_out, m.predictor_hidden)


def check_model_fits(params: Params, in_channels: int, device: torch.device) -> None:
    """Refuse, before allocating anything, a model whose weights, gradients, LARS momentum
    and target copy would not fit the device's free memory (built on the meta device to
    count its parameters)."""
    m = params.model
    with torch.device("meta"):
        model = BYOL(encoder_spec(params, in_channels), m.projector_hidden, m.projector_out, m.predictor_hidden)
    online = sum(p.numel() for p in model.trainable_parameters())
    everything = sum(t.numel() for t in (*model.parameters(), *model.buffers()))
    need = 4 * (3 * online + everything - online)
    free = free_memory(device)
    if free and need > free:
        raise ByolError(f"model: {online / 1e6:.0f}M trainable parameters need {need / 2**30:.1f} GiB for weights, "
                        f"gradients, optimizer state and the target network, but {device} has {free / 2**30:.1f} GiB "
                        "free. Lower model.width or model.projector_hidden / projector_out / predictor_hidden.")


def build_optimizer(model: BYOL, params: Params) -> LARS:
    cfg = params.pretrain
    return LARS(param_groups(model.trainable_parameters(), cfg.weight_decay), lr=0.0,
                momentum=cfg.momentum, weight_decay=cfg.weight_decay, trust_coefficient=cfg.trust_coefficient)


def run_key(params: Params, data_hash: str, device: torch.device) -> str:
    """A hash of everything that shapes the trained weights (params, data, device type):
    a resume state is only ever continued under the same key, so a stale state never
    leaks into another run. Knobs that only change logging or monitoring are left out, so
    changing them does not throw away a half-finished run; so are the process count, since
    the global batch and each sample's augmentation do not depend on it, and whether the
    data is resident or streamed, since both give the same batches."""
    shaping = params.model_dump(mode="json", include={"seed", "model", "augment", "pretrain"})
    for knob in ("log_every", "checkpoint_every", "monitor_bank", "monitor_queries", "devices", "nodes",
                 "resident_max_mb"):
        shaping["pretrain"].pop(knob)
    blob = json.dumps({"params": shaping, "data": data_hash, "device": device.type}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _epoch_generator(seed: int, epoch: int, stream: int, device: torch.device) -> torch.Generator:
    """Each epoch's randomness comes from (seed, epoch, stream) alone, so a run resumed at
    an epoch boundary draws exactly what the uninterrupted run drew."""
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + epoch * 7 + stream)


@dataclass
class TrainState:
    """Everything that changes during training, in one place."""

    model: BYOL
    optimizer: LARS
    step: int = 0
    epoch: int = 0  # completed epochs
    history: list[dict] = field(default_factory=list)  # one row per epoch
    steps: list[dict] = field(default_factory=list)  # one row per log interval (pretrain.log_every)
    forward: torch.nn.Module | None = None  # the DDP wrapper of ``model`` when distributed

    def to_checkpoint(self, key: str, params: Params) -> dict:
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {"run_key": key, "step": self.step, "epoch": self.epoch, "history": self.history, "steps": self.steps,
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "rng": rng, "params": params.model_dump(mode="json")}

    def restore(self, blob: dict) -> None:
        self.model.load_state_dict(blob["model"])
        self.optimizer.load_state_dict(blob["optimizer"])
        self.step, self.epoch, self.history = int(blob["step"]), int(blob["epoch"]), list(blob["history"])
        self.steps = list(blob.get("steps", []))
        torch.set_rng_state(blob["rng"]["cpu"])
        if "cuda" in blob["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(blob["rng"]["cuda"])


def train_step(state: TrainState, images: torch.Tensor, views: tuple[ViewSpec, ViewSpec], size: int,
               mean: torch.Tensor, std: torch.Tensor, gen: torch.Generator, lr: float, tau: float,
               precision: str, shard: tuple[int, int] = (0, 1)) -> tuple[torch.Tensor, torch.Tensor]:
    """One BYOL update on a uint8 batch (B, C, H, W): this rank's ``shard`` = (rank, world)
    of the global batch. Returns (loss, collapse std) as device tensors, without waiting
    for the device."""
    for group in state.optimizer.param_groups:
        group["lr"] = lr
    layout = memory_format(images.device)
    view1, view2 = (make_view(images, spec, size, mean, std, gen, shard).contiguous(memory_format=layout)
                    for spec in views)
    with autocast(images.device, precision):
        loss, z = (state.model if state.forward is None else state.forward)(view1, view2)
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    state.optimizer.step()
    state.model.update_target(tau)  # after the optimizer step, with tau of this step
    state.step += 1
    return loss.detach(), collapse_std(z.detach())


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
                   len(prepared.card["classes"]))

    def knn_top1(self, encoder, mean, std, params: Params, device) -> float:
        batch = params.evaluate.batch_size
        bank = extract_features(encoder, self.bank, mean, std, batch, device)
        queries = extract_features(encoder, self.queries, mean, std, batch, device)
        return knn_top1(bank, self.bank_labels, queries, self.query_labels, self.num_classes, params.knn)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def pretrain(params: Params, prepared: Prepared, device: torch.device, log: Callable[[str], None] = _stderr,
             world: distributed.World = distributed.World()) -> tuple[TrainState, Schedule]:
    """Train BYOL on the prepared pretraining images, resuming from ``paths.resume_state``
    when it was made under the same params and data. Returns the final state and the
    schedule. Under DDP (``world.size > 1``) every rank calls this; rank 0 alone logs and
    writes the resume state."""
    if not world.is_main:
        log = lambda line: None  # noqa: E731 - rank 0 speaks for all
    cfg = params.pretrain
    card = prepared.card
    source = prepared.pretrain_images
    schedule = derive_schedule(cfg, len(source))
    size = card["height"]
    mean = torch.tensor(card["mean"], device=device)
    std = torch.tensor(card["std"], device=device)
    views = byol_views(params.augment, size)
    monitor = Monitor.from_prepared(prepared, cfg.monitor_bank, cfg.monitor_queries)
    batches = loader.for_data(source, device, cfg.resident_max_mb)
    log(f"pretrain: {len(source)} images ({source.nbytes / 2**20:.0f} MiB), {batches.name} on {device}")

    check_model_fits(params, card["channels"], device)
    model = build_model(params, card["channels"]).to(device, memory_format=memory_format(device))
    if world.size > 1:
        model = distributed.sync_batchnorm(model, device)
    state = TrainState(model, build_optimizer(model, params))
    key = run_key(params, card["data_hash"], device)
    resume_path = params.paths.resume_state
    for stale in remove_stale_temps(resume_path):
        log(f"pretrain: removed {stale.name}, a checkpoint cut short by a killed run")
    if resume_path.is_file():
        blob = load_state(resume_path)
        if blob.get("run_key") == key:
            try:
                state.restore(blob)
            except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as exc:
                raise ByolError(f"{resume_path}: the saved training state does not fit this model "
                                f"({brief(exc, 200)}). Delete it to start afresh.") from None
            log(f"pretrain: resuming from {resume_path} after epoch {state.epoch} (step {state.step})")
        else:
            log(f"pretrain: ignoring {resume_path}: it was made under other params or data "
                f"(key {blob.get('run_key')} != {key}); starting fresh")
    if world.size > 1:  # after the restore: DDP starts from rank 0's weights, identical anyway
        state.forward = distributed.wrap(model, device)
    if cfg.compile:
        state.forward = torch.compile(model if state.forward is None else state.forward)

    batch = cfg.batch_size
    local = batch // world.size  # this rank's slice of each global batch
    for epoch in range(state.epoch, cfg.epochs):
        order_gen = _epoch_generator(params.seed, epoch, 0, device)
        aug_gen = _epoch_generator(params.seed, epoch, 1, device)
        order = torch.randperm(len(source), generator=order_gen, device=device)
        state.model.train()
        loss_sum = torch.zeros((), device=device)
        collapse_sum = torch.zeros((), device=device)
        bar = tqdm(total=schedule.steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="step",
                   disable=None if world.is_main else True, leave=False, file=sys.stderr)
        started = time.perf_counter()
        logged = (0, 0.0, 0.0)  # (steps, loss sum, collapse sum) at the last log point
        with contextlib.closing(batches.batches(order, schedule.steps_per_epoch, batch, local, world.rank)) as epoch_batches:
            for i, images in enumerate(epoch_batches):
                lr = lr_at(state.step, schedule.total_steps, schedule.warmup_steps, schedule.peak_lr)
                tau = target_tau(state.step, schedule.total_steps, cfg.tau_base)
                loss, collapse = train_step(state, images, views, size,
                                            mean, std, aug_gen, lr, tau, cfg.precision, world.shard)
                loss_sum += loss
                collapse_sum += collapse
                if (i + 1) % cfg.log_every == 0 or i + 1 == schedule.steps_per_epoch:
                    # one host sync per log interval (and all-reduces: every rank stops together)
                    mean_loss = distributed.mean_over_ranks(loss_sum)
                    _check_finite(mean_loss, state, resume_path)
                    sums = (float(mean_loss), float(distributed.mean_over_ranks(collapse_sum)))
                    rate = (i + 1) * batch / (time.perf_counter() - started)
                    interval = (i + 1) - logged[0]
                    state.steps.append({"step": state.step, "epoch": round(epoch + (i + 1) / schedule.steps_per_epoch, 4),
                                        "loss": (sums[0] - logged[1]) / interval, "lr": lr, "tau": tau,
                                        "collapse_std": (sums[1] - logged[2]) / interval, "images_per_sec": rate})
                    logged = (i + 1, *sums)
                    bar.set_postfix(loss=f"{sums[0] / (i + 1):.4f}", img_s=f"{rate:.0f}")
                    bar.update((i + 1) - bar.n)
        synchronize(device)
        seconds = time.perf_counter() - started
        bar.close()
        state.epoch = epoch + 1
        row = {
            "epoch": state.epoch, "step": state.step,
            "loss": float(distributed.mean_over_ranks(loss_sum)) / schedule.steps_per_epoch,
            "lr": lr, "tau": tau,
            "collapse_std": float(distributed.mean_over_ranks(collapse_sum)) / schedule.steps_per_epoch,
            "knn_top1": monitor.knn_top1(state.model.encoder, mean, std, params, device),
            "images_per_sec": schedule.steps_per_epoch * batch / seconds,
            "seconds": seconds,
        }
        state.history.append(row)
        log(f"epoch {state.epoch}/{cfg.epochs}  loss {row['loss']:.4f}  lr {lr:.4g}  tau {tau:.5f}  "
            f"collapse {row['collapse_std']:.3f}  knn {row['knn_top1']:.4f}  {row['images_per_sec']:.0f} img/s")
        if state.epoch % cfg.checkpoint_every == 0 or state.epoch == cfg.epochs:
            # The loss is computed before the last update: check the weights themselves too.
            weight_norm = torch.stack(torch._foreach_norm(list(state.model.parameters()))).sum()
            _check_finite(weight_norm, state, resume_path, "the weight norm")
            if world.is_main:
                save_state(resume_path, state.to_checkpoint(key, params))
            distributed.barrier()  # no rank runs ahead of the state it would resume from
    if world.size > 1:
        log(f"pretrain: all {world.size} ranks hold identical online and target weights "
            f"(hash {distributed.check_in_step(state.model)})")
    return state, schedule
