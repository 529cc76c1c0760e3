"""Pictures for the asset pages: the training curves as a PNG inside Markdown metadata."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import dagster as dg
import pandas as pd

CURVES = (("loss", "BYOL loss"), ("knn_top1", "kNN top-1 (monitor)"), ("tau", "target EMA tau"),
          ("lr", "learning rate"), ("collapse_std", "collapse std"))


def curves_png(curve_csv: Path) -> bytes:
    """One small chart per curve of ``metrics/pretrain_curve.csv``, against epoch."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    table = pd.read_csv(curve_csv)
    fig, axes = plt.subplots(1, len(CURVES), figsize=(3.2 * len(CURVES), 2.6), dpi=90)
    for ax, (column, title) in zip(axes, CURVES):
        ax.plot(table["epoch"], table[column], marker="o")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def curves_markdown(curve_csv: Path) -> dg.MetadataValue:
    encoded = base64.b64encode(curves_png(curve_csv)).decode()
    return dg.MetadataValue.md(f"![training curves](data:image/png;base64,{encoded})")
