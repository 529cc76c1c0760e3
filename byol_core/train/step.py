"""One BYOL training step, and what it needs: the model, the optimizer, the recipe.

Order of one step (as in the paper's reference code): set LR -> make both views ->
forward online and target -> loss -> backward -> LARS step -> EMA update of the target.
:func:`train_step` takes the state, a batch and the views to make, and returns its
metrics as device tensors without waiting for the device; the caller decides when to
read them. The pretraining loop (byol_core.train.loop) and every benchmark call this same step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from byol_core.train import distributed
from byol_core.train.augment import Augmenter
from byol_core.train.byol import BYOL, collapse_std, target_tau
from byol_core.device import autocast, free_memory, memory_format
from byol_core.errors import ByolError
from byol_core.train.nets import EncoderSpec
from byol_core.train.optim import LARS, lr_at, param_groups
from byol_core.schema.pretrain import PretrainConfig, PretrainParams, Schedule, derive_schedule


def encoder_spec(params: PretrainParams, in_channels: int) -> EncoderSpec:
    m = params.model
    return EncoderSpec(arch=m.arch, width=m.width, in_channels=in_channels, small_stem=m.small_stem, pool=m.pool)


def build_model(params: PretrainParams, in_channels: int) -> BYOL:
    torch.manual_seed(params.seed)
    m = params.model
    return BYOL(encoder_spec(params, in_channels), m.projector_hidden, m.projector_out, m.predictor_hidden)


def check_model_fits(params: PretrainParams, in_channels: int, device: torch.device) -> None:
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


def build_optimizer(parameters: Iterable[nn.Parameter], cfg: PretrainConfig, lr: float = 0.0) -> LARS:
    """LARS over ``parameters`` with pretrain's settings. :func:`train_step` sets the LR
    before every update; ``lr`` is for callers that keep it constant."""
    return LARS(param_groups(parameters, cfg.weight_decay), lr=lr, momentum=cfg.momentum,
                weight_decay=cfg.weight_decay, trust_coefficient=cfg.trust_coefficient)


@dataclass(frozen=True)
class Recipe:
    """How every step is taken, fixed for a run: the LR (warmup, then cosine; BYOL appendix
    C) and the target's tau (section 3.2) as pure functions of the step, and the precision."""

    schedule: Schedule
    tau_base: float
    precision: str  # auto | fp32 | bf16 (device.autocast)

    @classmethod
    def for_run(cls, cfg: PretrainConfig, n_images: int) -> Recipe:
        """Pretrain's recipe over ``n_images`` (steps and peak LR derived, never restated)."""
        return cls(derive_schedule(cfg, n_images), cfg.tau_base, cfg.precision)

    def lr(self, step: int) -> float:
        s = self.schedule
        return lr_at(step, s.total_steps, s.warmup_steps, s.peak_lr)

    def tau(self, step: int) -> float:
        return target_tau(step, self.schedule.total_steps, self.tau_base)


@dataclass
class TrainState:
    """Everything that changes during training, in one place, and the recipe it changes by.
    Saved and restored for a resume by :mod:`byol_core.train.resume`."""

    model: BYOL
    optimizer: LARS
    recipe: Recipe
    step: int = 0
    epoch: int = 0  # completed epochs
    history: list[dict] = field(default_factory=list)  # one row per epoch
    steps: list[dict] = field(default_factory=list)  # one row per log interval (pretrain.log_every)
    forward: nn.Module | None = None  # what the step calls instead of ``model``: DDP's or torch.compile's wrapper


def new_state(params: PretrainParams, in_channels: int, recipe: Recipe, device: torch.device,
              world: distributed.World = distributed.World()) -> TrainState:
    """A fresh model (seeded: every run and every rank starts from the same weights) in the
    device's memory layout, with SyncBatchNorm across processes, and LARS over its
    trainable parameters."""
    check_model_fits(params, in_channels, device)
    model = build_model(params, in_channels).to(device, memory_format=memory_format(device))
    if world.size > 1:
        model = distributed.sync_batchnorm(model, device)
    return TrainState(model, build_optimizer(model.trainable_parameters(), params.pretrain), recipe)


@dataclass(frozen=True)
class StepMetrics:
    """What one step reports. ``loss`` (scalar) and ``collapse_std`` (scalar, of the online
    projections of view 1) stay on the device: reading them waits for it. ``lr`` and ``tau``
    are the values the step used."""

    loss: torch.Tensor
    collapse_std: torch.Tensor
    lr: float
    tau: float


def _no_phase(name: str) -> None:
    pass


def update(state: TrainState, images: torch.Tensor, augment: Augmenter, lr: float | torch.Tensor,
           ema_weight: float | torch.Tensor, phase: Callable[[str], None] = _no_phase,
           autocast_cache: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The work of one step, with the LR and the EMA weight (``1 - tau``) given: as Python
    numbers (eagerly) or as 0-d device tensors that a CUDA graph reads at each replay
    (byol_core.train.graphed). Leaves ``state.step`` alone; returns (loss, collapse_std)."""
    for group in state.optimizer.param_groups:
        group["lr"] = lr
    layout = memory_format(images.device)
    view1, view2 = (view.contiguous(memory_format=layout) for view in augment(images))
    phase("augment")
    with autocast(images.device, state.recipe.precision, cache=autocast_cache):
        loss, z = (state.model if state.forward is None else state.forward)(view1, view2)
    phase("forward")
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    phase("backward")
    state.optimizer.step()
    phase("optimizer")
    state.model.move_target(ema_weight)  # after the optimizer step, with tau of this step
    phase("ema")
    return loss.detach(), collapse_std(z.detach())


def train_step(state: TrainState, images: torch.Tensor, augment: Augmenter,
               phase: Callable[[str], None] = _no_phase) -> StepMetrics:
    """One BYOL update on a uint8 batch (B, C, H, W), this process's share of the global
    batch (``augment.shard``). Returns its metrics without waiting for the device.

    ``phase`` is called with each part's name as it ends ("augment", "forward", "backward",
    "optimizer", "ema"), so a benchmark can time the parts of this very step; it must leave
    the state and the random generators alone."""
    lr, tau = state.recipe.lr(state.step), state.recipe.tau(state.step)
    loss, collapse = update(state, images, augment, lr, 1.0 - tau, phase)
    state.step += 1
    return StepMetrics(loss, collapse, lr, tau)
