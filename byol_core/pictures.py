"""The pictures the stages leave beside their metrics (PNG; `dvc plots` and the Dagster
asset pages show them): nearest neighbours, a 2-D map of the embeddings, and the
label-efficiency curve. Rendered off-screen with matplotlib; the same inputs give the
same bytes."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    return plt


def png(fig, path: Path | None = None) -> bytes:
    """The figure as PNG bytes (also written to ``path`` when given); the figure is closed."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    pyplot().close(fig)
    if path is not None:
        Path(path).write_bytes(buffer.getvalue())
    return buffer.getvalue()


def _show(ax, image: np.ndarray) -> None:
    """uint8 (C, H, W) on an axis, without ticks."""
    if image.shape[0] == 1:
        ax.imshow(image[0], cmap="gray", vmin=0, vmax=255)
    else:
        ax.imshow(image.transpose(1, 2, 0))
    ax.set_xticks([])
    ax.set_yticks([])


def neighbour_grid(queries: np.ndarray, query_labels: list[str], neighbours: np.ndarray,
                   neighbour_labels: list[list[str]], similarities: np.ndarray, path: Path | None = None) -> bytes:
    """One row per query: the query image, then its nearest gallery images left to right,
    each titled with its label (green: same as the query's, red: not) and similarity."""
    plt = pyplot()
    rows, k = neighbours.shape[:2]
    fig, axes = plt.subplots(rows, k + 1, figsize=(1.25 * (k + 1), 1.35 * rows), dpi=90, squeeze=False)
    for r in range(rows):
        _show(axes[r, 0], queries[r])
        axes[r, 0].set_title(f"query - {query_labels[r]}"[:22], fontsize=6.5, fontweight="bold")
        for j in range(k):
            _show(axes[r, j + 1], neighbours[r, j])
            same = neighbour_labels[r][j] == query_labels[r]
            axes[r, j + 1].set_title(f"{neighbour_labels[r][j][:12]} {similarities[r, j]:.3f}", fontsize=6,
                                     color="darkgreen" if same else "firebrick")
    fig.suptitle("test queries (left) and their nearest training images by cosine similarity", fontsize=9)
    fig.tight_layout()
    return png(fig, path)


def pca_2d(x: np.ndarray) -> np.ndarray:
    """The first two principal components of the rows of ``x`` (sign fixed: the largest
    loading of each component is positive)."""
    centred = x - x.mean(0, keepdims=True)
    _, _, vt = np.linalg.svd(centred.astype(np.float64), full_matrices=False)
    axes = vt[:2]
    axes *= np.sign(axes[np.arange(len(axes)), np.abs(axes).argmax(1)])[:, None]
    return centred @ axes.T


def embedding_map(points: np.ndarray, labels: np.ndarray, classes: list[str], path: Path | None = None) -> bytes:
    """A scatter of 2-D points coloured by class, with a legend."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 5.2), dpi=90)
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    for c, name in enumerate(classes):
        mine = labels == c
        if mine.any():
            ax.scatter(points[mine, 0], points[mine, 1], s=3, alpha=0.6, color=cmap(c % cmap.N), label=name[:20])
    ax.set_title(f"test embeddings, first two principal components ({len(points)} images)", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    if len(classes) <= 20:
        ax.legend(markerscale=4, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.tight_layout()
    return png(fig, path)


def label_efficiency(curves: dict[str, dict[str, float]], path: Path | None = None) -> bytes:
    """Linear-probe top-1 against the share of train labels used, one line per feature set."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 3.4), dpi=90)
    for name, points in curves.items():
        shares = sorted(points, key=float)
        ax.plot([100 * float(s) for s in shares], [points[s] for s in shares], marker="o", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("train labels used (%)", fontsize=8)
    ax.set_ylabel("linear probe top-1 (test)", fontsize=8)
    ax.set_title("label efficiency", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return png(fig, path)
