"""How good is an encoder: the linear probe on frozen features (features.py extracts them
and holds the kNN).

The linear probe is multinomial logistic regression on standardised frozen features,
fitted to convergence with full-batch L-BFGS. Its weight decay is chosen on a validation
split carved from train (never on test), then the probe is refitted on all of train.
The same probe runs on a random-init encoder of the same architecture and on raw pixels,
so the BYOL figure always comes with the two baselines it has to beat.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from byol_core.inputs import to_input
from byol_core.schema.probe import EvaluateConfig

PIXEL_PX = 32  # the raw-pixel baseline sees images at most this size (area-downsampled)


def pixel_features(images, mean: torch.Tensor, std: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """Raw normalised pixels of uint8 images (N, C, H, W), flattened: the no-learning
    baseline. Images larger than :data:`PIXEL_PX` are first area-downsampled to it, so the
    baseline stays a few thousand numbers per image. (N, C*min(H, 32)**2), a chunk at a time."""
    def one(batch: torch.Tensor) -> torch.Tensor:
        x = to_input(batch, mean, std)
        if x.shape[-1] > PIXEL_PX or x.shape[-2] > PIXEL_PX:
            x = F.interpolate(x, size=(PIXEL_PX, PIXEL_PX), mode="area")
        return x.flatten(1)
    return torch.cat([one(torch.as_tensor(images[start:start + chunk])) for start in range(0, len(images), chunk)])


def pixel_dim(channels: int, size: int) -> int:
    return channels * min(size, PIXEL_PX) ** 2




def _standardise(train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    mean = train.mean(0, keepdim=True)
    std = train.std(0, correction=0, keepdim=True).clamp_min(1e-6)
    return [(x - mean) / std for x in (train, *others)]


def fit_logistic(x: torch.Tensor, y: torch.Tensor, num_classes: int, weight_decay: float, max_iter: int,
                 tolerance: float, init: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor, int, bool]:
    """Multinomial logistic regression, ``mean CE + wd/2 ||W||^2``, by full-batch L-BFGS.

    x (N, D), y (N,). Returns weight (C, D), bias (C,), the L-BFGS iterations used, and
    whether it stopped on its tolerance rather than on its iteration or evaluation budget."""
    weight = torch.zeros(num_classes, x.shape[1], device=x.device) if init is None else init[0].clone()
    bias = torch.zeros(num_classes, device=x.device) if init is None else init[1].clone()
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    solver = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, tolerance_grad=tolerance,
                               tolerance_change=1e-12, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        solver.zero_grad()
        loss = F.cross_entropy(x @ weight.T + bias, y) + 0.5 * weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    solver.step(closure)
    state = solver.state[solver._params[0]]
    iterations, evaluations = int(state.get("n_iter", 0)), int(state.get("func_evals", 0))
    max_eval = solver.defaults["max_eval"]
    return weight.detach(), bias.detach(), iterations, iterations < max_iter and evaluations < max_eval


def _topk(logits: torch.Tensor, y: torch.Tensor, k: int) -> float:
    k = min(k, logits.shape[1])
    return int((logits.topk(k, dim=1).indices == y.unsqueeze(1)).any(1).sum()) / len(y)


@dataclass(frozen=True)
class ProbeResult:
    top1: float
    top5: float
    weight_decay: float
    val_top1: float
    iterations: int
    converged: bool  # L-BFGS met its tolerance within its iteration and evaluation budget
    predictions: np.ndarray  # (n_test,) predicted class per test image

    def summary(self) -> dict:
        return {"top1": self.top1, "top5": self.top5, "weight_decay": self.weight_decay,
                "val_top1": self.val_top1, "iterations": self.iterations, "converged": self.converged}


def linear_probe(train_x: torch.Tensor, train_y: np.ndarray, test_x: torch.Tensor, test_y: np.ndarray,
                 num_classes: int, cfg: EvaluateConfig, seed: int) -> ProbeResult:
    """Choose weight decay on a held-out part of train, refit on all of train, score test.
    Runs where the features are (a GPU fits in seconds what takes CPU cores minutes); the
    split of train is drawn on the CPU, so it is the same split on every device."""
    device = train_x.device
    train_y, test_y = torch.as_tensor(train_y).to(device), torch.as_tensor(test_y).to(device)
    order = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(seed)).to(device)
    n_val = max(1, round(cfg.val_fraction * len(train_x)))
    val_idx, fit_idx = order[:n_val], order[n_val:]
    fit_x, val_x = _standardise(train_x[fit_idx], train_x[val_idx])

    best = None  # (val_top1, wd, params)
    init = None
    for wd in sorted(cfg.weight_decays, reverse=True):  # strongest first: each fit warm-starts the next
        w, b, _, _ = fit_logistic(fit_x, train_y[fit_idx], num_classes, wd, cfg.max_iter, cfg.tolerance, init)
        init = (w, b)
        val_top1 = _topk(val_x @ w.T + b, train_y[val_idx], 1)
        if best is None or val_top1 > best[0]:
            best = (val_top1, wd, (w, b))

    val_top1, wd, start = best
    all_x, test_x = _standardise(train_x, test_x)
    w, b, iterations, converged = fit_logistic(all_x, train_y, num_classes, wd, cfg.max_iter, cfg.tolerance, start)
    logits = test_x @ w.T + b
    return ProbeResult(top1=_topk(logits, test_y, 1), top5=_topk(logits, test_y, 5), weight_decay=wd,
                       val_top1=val_top1, iterations=iterations, converged=converged,
                       predictions=logits.argmax(1).cpu().numpy())
