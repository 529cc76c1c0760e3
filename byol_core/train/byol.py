"""BYOL's maths and its online/target pair (Grill et al. 2020, arXiv 2006.07733).

Online network: encoder -> projector -> predictor, trained by the optimizer.
Target network: encoder -> projector, an exponential moving average (EMA) of the online
ones; it gets no gradients and is not in the optimizer.

Target BatchNorm policy (chosen on purpose): the target runs in train mode like the
online net, so during training it normalises with the batch statistics of its own input,
as the paper's target does. Its running mean/var buffers are *not* averaged: they track
the target's own inputs through ordinary BatchNorm momentum, so the target on its own is
a usable eval-mode network. Only parameters go through the EMA.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from byol_core.train.nets import EncoderSpec, MLPHead, build_encoder


def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``2 - 2 cos(p, z)``, i.e. the MSE of the l2-normalised vectors.

    p: (B, D) online predictions; z: (B, D) target projections (the caller keeps them out of
    the graph). Each per-sample term lies in [0, 4]. Computed in fp32 for stability.
    """
    return (2 - 2 * F.cosine_similarity(p.float(), z.float(), dim=-1, eps=1e-8)).mean()


def target_tau(step: int, total_steps: int, base: float) -> float:
    """The paper's EMA rate, ``1 - (1 - base) * (cos(pi k / K) + 1) / 2``, k capped at K.

    Rises from ``base`` at step 0 to 1 at the last step (section 3.2)."""
    k = min(step, total_steps)
    return 1 - (1 - base) * (math.cos(math.pi * k / max(total_steps, 1)) + 1) / 2


@torch.no_grad()
def ema_update(target: list[torch.Tensor], online: list[torch.Tensor], tau: float) -> None:
    """In place, ``target <- tau * target + (1 - tau) * online``, as one foreach kernel.

    ``lerp`` with weight 0 returns the target bit for bit and with weight 1 the online
    value bit for bit, so tau = 1 and tau = 0 are exact."""
    ema_lerp(target, online, 1.0 - tau)


@torch.no_grad()
def ema_lerp(target: list[torch.Tensor], online: list[torch.Tensor], weight: float | torch.Tensor) -> None:
    """``target <- target + weight * (online - target)`` in place. ``weight`` is ``1 - tau``:
    a number (one foreach kernel), or a 0-d tensor on the device, read when the kernels run
    (a CUDA graph's replay); foreach lerp takes no tensor weight, so that is one lerp per
    tensor, the same arithmetic."""
    if isinstance(weight, torch.Tensor):
        for t, o in zip(target, online, strict=True):
            t.lerp_(o, weight)
    else:
        torch._foreach_lerp_(target, online, weight)


def collapse_std(z: torch.Tensor) -> torch.Tensor:
    """Collapse indicator: per-dimension std over the batch of l2-normalised ``z`` (B, D),
    averaged over dimensions, times sqrt(D). About 1 for spread-out outputs, 0 if collapsed."""
    z = F.normalize(z.float(), dim=1)
    return z.std(dim=0).mean() * math.sqrt(z.shape[1])


class BYOL(nn.Module):
    """The online encoder+projector, its predictor, and the EMA target copy."""

    def __init__(self, spec: EncoderSpec, projector_hidden: int, projector_out: int, predictor_hidden: int) -> None:
        super().__init__()
        self.spec = spec
        self.online = nn.ModuleDict({
            "encoder": build_encoder(spec),
            "projector": MLPHead(spec.feature_dim, projector_hidden, projector_out),
        })
        self.predictor = MLPHead(projector_out, predictor_hidden, projector_out)
        # The target starts as an exact copy of the online pair; same module order, so
        # parameters pair up one to one for the EMA.
        self.target = copy.deepcopy(self.online)
        self.target.requires_grad_(False)

    @property
    def encoder(self) -> nn.Module:
        """The online encoder: what gets evaluated and exported."""
        return self.online["encoder"]

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [*self.online.parameters(), *self.predictor.parameters()]

    def update_target(self, tau: float) -> None:
        """EMA step of the target towards the online pair; call after ``optimizer.step()``."""
        self.move_target(1.0 - tau)

    def move_target(self, weight: float | torch.Tensor) -> None:
        """The EMA step by its weight ``1 - tau`` (a number, or a 0-d device tensor)."""
        ema_lerp(list(self.target.parameters()), list(self.online.parameters()), weight)

    def forward(self, view1: torch.Tensor, view2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Symmetrised BYOL loss for two views (B, C, H, W) of the same images.

        Returns the loss (scalar: loss(v1->v2) + loss(v2->v1), in [0, 8]) and the online
        projections of view 1 (B, D) for monitoring. Each view gets its own forward, so
        BatchNorm sees the statistics of one view at a time, as in the paper.
        """
        online_z = [self.online["projector"](self.online["encoder"](v)) for v in (view1, view2)]
        p1, p2 = (self.predictor(z) for z in online_z)
        with torch.no_grad():
            t1, t2 = (self.target["projector"](self.target["encoder"](v)) for v in (view1, view2))
        loss = byol_loss(p1, t2) + byol_loss(p2, t1)
        return loss, online_z[0]
