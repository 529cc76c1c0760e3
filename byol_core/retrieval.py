"""Retrieval, label-efficiency and spread measures of frozen features.

Retrieval: each test image queries the train gallery by cosine similarity; a gallery image
is relevant when it has the query's label. ``recall_at_k`` is the share of queries with a
relevant image among their k nearest (the metric-learning Recall@K). ``map_at_r`` is mean
average precision at R (Musgrave et al. 2020, "A Metric Learning Reality Check"): for a
query with R relevant gallery images, ``AP@R = (1/R) sum_{i<=R} P(i) rel(i)`` over its R
nearest, so a perfect ranking scores 1 and it rewards ranking every relevant image first.

Label efficiency: the linear probe trained on a small class-balanced share of the train
labels (as the 1% and 10% subsets of the paper's semi-supervised table).

Spread: how much of its room an encoder's features use. ``effective_rank`` counts the
directions the features vary along; ``mean_cosine`` says how much they all point one way.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

SIMILARITY_BUDGET = 1 << 24  # similarity entries ranked at once: queries per chunk x ranked gallery images


@torch.no_grad()
def retrieval_metrics(gallery: torch.Tensor, gallery_labels, queries: torch.Tensor, query_labels,
                      ks: tuple[int, ...] = (1, 5)) -> dict:
    """Recall@k for ``ks`` and mAP@R of ``queries`` (M, D) against ``gallery`` (N, D)."""
    gallery = F.normalize(gallery.float(), dim=1)
    g_labels = torch.as_tensor(np.asarray(gallery_labels), dtype=torch.int64)
    q_labels = torch.as_tensor(np.asarray(query_labels), dtype=torch.int64)
    per_class = torch.bincount(g_labels, minlength=int(max(g_labels.max(), q_labels.max())) + 1)
    r_of = per_class[q_labels]  # (M,) relevant gallery images per query
    depth = int(max(max(ks), int(r_of.max()) if len(r_of) else 0))
    depth = min(depth, len(gallery))
    chunk = max(1, SIMILARITY_BUDGET // max(len(gallery), 1))
    hits = {k: 0 for k in ks}
    ap_sum, ap_count = 0.0, 0
    for start in range(0, len(queries), chunk):
        q = F.normalize(queries[start:start + chunk].float(), dim=1)
        labels, r = q_labels[start:start + chunk], r_of[start:start + chunk]
        order = (q @ gallery.T).topk(depth, dim=1).indices
        relevant = (g_labels[order] == labels[:, None]).float()  # (m, depth)
        for k in ks:
            hits[k] += int(relevant[:, :k].any(1).sum())
        ranks = torch.arange(1, depth + 1, dtype=torch.float32)
        precision = relevant.cumsum(1) / ranks
        within_r = ranks[None, :] <= r[:, None]
        ap = (precision * relevant * within_r).sum(1) / r.clamp_min(1)
        ap_sum += float(ap[r > 0].sum())
        ap_count += int((r > 0).sum())
    m = max(len(queries), 1)
    return {**{f"recall_at_{k}": hits[k] / m for k in ks}, "map_at_r": ap_sum / max(ap_count, 1),
            "queries": int(len(queries)), "gallery": int(len(gallery))}


def balanced_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Indices of a class-balanced, seeded share ``fraction`` of ``labels``: the same number
    of images from every class (``fraction * N / classes``, at least 1, at most all of a
    class), drawn without replacement; sorted. The same arguments give the same indices."""
    labels = np.asarray(labels)
    classes = np.unique(labels)
    per_class = max(1, round(fraction * len(labels) / max(len(classes), 1)))
    rng = np.random.default_rng([seed, round(fraction * 1_000_000)])
    picked = [rng.choice(np.flatnonzero(labels == c), size=min(per_class, int((labels == c).sum())), replace=False)
              for c in classes]
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)


@torch.no_grad()
def spread_metrics(features: torch.Tensor) -> dict:
    """Effective rank and mean pairwise cosine similarity of ``features`` (N, D), N >= 2.

    ``effective_rank`` (Roy & Vetterli 2007): exp of the Shannon entropy of the singular
    values of the centred matrix, normalised to sum 1; from 1 (the rows vary along one
    direction) to min(N, D) (along all equally), 0 if every row is the same. It ignores
    scale, so rows that all equal one vector up to tiny noise get the rank of the noise:
    ``mean_cosine`` is what shows that collapse. ``mean_cosine`` is the mean over pairs
    i != j of the cosine similarity (0 for a zero row), in [-1/(N-1), 1], from the sum of
    the unit rows: ``sum_{i!=j} u_i.u_j = ||sum_i u_i||^2 - sum_i ||u_i||^2``."""
    x = features.double()
    centred = x - x.mean(0)
    # Singular values as the square roots of the eigenvalues of the smaller Gram matrix: in
    # float64, cheaper than an SVD, and only values under ~1e-8 of the largest, which add
    # nothing measurable to the entropy, are lost to rounding.
    gram = centred.T @ centred if x.shape[1] <= x.shape[0] else centred @ centred.T
    singular = torch.linalg.eigvalsh(gram).clamp_min(0).sqrt()
    p = singular[singular > 0] / singular.sum()
    rank = float((-(p * p.log()).sum()).exp()) if len(p) else 0.0
    unit = F.normalize(x, dim=1)
    n = len(x)
    cosine = float((unit.sum(0).square().sum() - unit.square().sum()) / (n * (n - 1)))
    return {"effective_rank": rank, "effective_rank_fraction": rank / x.shape[1], "mean_cosine": cosine}
