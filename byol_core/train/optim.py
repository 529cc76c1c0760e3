"""LARS and the learning-rate schedule used by BYOL (You et al. 2017; BYOL appendix C).

LARS scales each weight tensor's step by ``trust_coefficient * ||w|| / ||g + wd * w||``.
As in BYOL, biases and BatchNorm parameters (every 1-D parameter) get neither weight
decay nor this adaptation.

One step, per weight tensor, in this order: decay ``u = g + wd * w``; trust ratio
``u = eta * ||w|| / ||u|| * u`` (a ratio of 1 where either norm is 0); then the learning
rate goes *into* the momentum buffer, ``v = m * v + lr * u; w = w - v``, as in You et
al.'s Algorithm 1.

DeepMind's BYOL reference (``byol/utils/optimizers.py``: weight decay, then LARS scaling
with momentum, then ``optax.scale(-lr)``) applies the learning rate *after* the momentum:
``mu = m * mu + u; w = w - lr * mu``. Under a constant LR the two are the same update
(``v = lr * mu``). They differ whenever the LR changes: here each past step keeps the LR it
was taken with, there the whole buffer is rescaled by the current LR. So during warmup
this update is a little smaller than the reference's and during the cosine decay a little
larger (it still coasts on its buffer when the LR reaches 0); the gap matters where the LR
changes fast relative to its size, at the start of warmup and at the end of the decay.

Kept on purpose: the project's published figures were trained with it, and a saved resume
state's momentum buffers hold LR-scaled steps, so switching would change every trained
weight and make a resumed run read its buffers in another meaning.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn


def param_groups(params: Iterable[nn.Parameter], weight_decay: float) -> list[dict]:
    """Split parameters: matrices/conv kernels get decay and adaptation, 1-D ones neither."""
    params = list(params)
    adapted = [p for p in params if p.ndim > 1]
    plain = [p for p in params if p.ndim <= 1]
    return [
        {"params": adapted, "weight_decay": weight_decay, "lars": True},
        {"params": plain, "weight_decay": 0.0, "lars": False},
    ]


class LARS(torch.optim.Optimizer):
    """Layer-wise adaptive rate scaling with momentum, using foreach kernels and no host syncs."""

    def __init__(self, groups: list[dict], lr: float, momentum: float = 0.9,
                 weight_decay: float = 0.0, trust_coefficient: float = 1e-3) -> None:
        defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay,
                    "trust_coefficient": trust_coefficient, "lars": True}
        super().__init__(groups, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D401 - torch's signature
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            if group["weight_decay"]:
                grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
            if group["lars"]:
                w_norm = torch.stack(torch._foreach_norm(params))
                g_norm = torch.stack(torch._foreach_norm(grads))
                # Trust ratio eta * ||w|| / ||g||, or 1 where either norm is zero.
                ratios = torch.where((w_norm > 0) & (g_norm > 0),
                                     group["trust_coefficient"] * w_norm / g_norm.clamp_min(1e-30), 1.0)
                grads = torch._foreach_mul(grads, list(ratios.unbind()))
            updates = torch._foreach_mul(grads, group["lr"])
            buffers = []
            for p, update in zip(params, updates):
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buffers.append(state["momentum_buffer"])
            torch._foreach_mul_(buffers, group["momentum"])
            torch._foreach_add_(buffers, updates)
            torch._foreach_sub_(params, buffers)
        return loss


def lr_at(step: int, total_steps: int, warmup_steps: int, peak_lr: float) -> float:
    """Linear warmup from 0 to ``peak_lr`` over ``warmup_steps``, then cosine decay to 0 at
    ``total_steps`` (BYOL appendix C; the reference ``learning_rate_schedule``)."""
    if step < warmup_steps:
        return peak_lr * step / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * peak_lr * (1 + math.cos(math.pi * min(progress, 1.0)))
