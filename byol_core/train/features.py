"""Frozen features and the weighted kNN: shared by pretrain's kNN monitor and the evaluate
stage. They live apart from the linear probe (evaluate.py), so changing the probe never
makes DVC rerun pretraining.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from byol_core.device import memory_format
from byol_core.inputs import to_input
from byol_core.schema.probe import KnnConfig


@torch.no_grad()
def extract_features(encoder: torch.nn.Module, images: np.ndarray | torch.Tensor, mean: torch.Tensor,
                     std: torch.Tensor, batch_size: int, device: torch.device,
                     on_batch: Callable[[int], None] | None = None) -> torch.Tensor:
    """Eval-mode features of uint8 images (N, C, H, W) -> float32 (N, D) on the CPU.

    ``on_batch(done)`` is called after each batch with the number of images done so far;
    the batch's features are on the CPU by then, so it costs no extra device sync."""
    was_training = encoder.training
    encoder.eval()
    mean, std = mean.to(device), std.to(device)
    chunks = []
    for start in range(0, len(images), batch_size):
        batch = torch.as_tensor(images[start:start + batch_size]).to(device, non_blocking=True)
        x = to_input(batch, mean, std).contiguous(memory_format=memory_format(device))
        chunks.append(encoder(x).float().cpu())
        if on_batch is not None:
            on_batch(min(start + batch_size, len(images)))
    encoder.train(was_training)
    return torch.cat(chunks)


@torch.no_grad()
def knn_predict(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, num_classes: int,
                cfg: KnnConfig, chunk: int = 1024) -> torch.Tensor:
    """Weighted kNN (Wu et al. 2018): cosine similarity, the k nearest bank entries vote
    with weight ``exp(sim / temperature)``. bank (N, D), queries (M, D) -> labels (M,)."""
    bank = F.normalize(bank.float(), dim=1)
    k = min(cfg.k, len(bank))
    predictions = []
    for start in range(0, len(queries), chunk):
        q = F.normalize(queries[start:start + chunk].float(), dim=1)
        sims, idx = (q @ bank.T).topk(k, dim=1)
        votes = torch.zeros(len(q), num_classes, dtype=sims.dtype, device=sims.device)
        # Shift by each row's best similarity (topk sorts, so column 0) before exp: the vote
        # is unchanged and a small temperature cannot overflow float32.
        votes.scatter_add_(1, bank_labels[idx], ((sims - sims[:, :1]) / cfg.temperature).exp())
        predictions.append(votes.argmax(1))
    return torch.cat(predictions)


def knn_top1(bank, bank_labels, queries, query_labels, num_classes: int, cfg: KnnConfig) -> float:
    predicted = knn_predict(bank, torch.as_tensor(bank_labels), queries, num_classes, cfg)
    return int((predicted == torch.as_tensor(query_labels)).sum()) / len(predicted)
