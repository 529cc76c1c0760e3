"""Pictures for the asset pages, shown inline (Markdown with the PNG in it, not behind a
click): the training curves, drawn here, and the pictures the stages leave in metrics/."""

from __future__ import annotations

import base64
from pathlib import Path

import dagster as dg
import pandas as pd

CURVES = (("loss", "BYOL loss"), ("knn_top1", "kNN top-1 (monitor, per epoch)"), ("tau", "target EMA tau"),
          ("lr", "learning rate"), ("collapse_std", "collapse std"))


def curves_png(curve_csv: Path, steps_csv: Path | None = None) -> bytes:
    """One small chart per curve: per logged step from ``pretrain_steps.csv`` when given
    (the kNN monitor runs once per epoch, so it stays per epoch), else per epoch."""
    from byol_core.pictures import png, pyplot

    plt = pyplot()
    epochs = pd.read_csv(curve_csv)
    steps = pd.read_csv(steps_csv) if steps_csv is not None and Path(steps_csv).is_file() else None
    fig, axes = plt.subplots(1, len(CURVES), figsize=(3.2 * len(CURVES), 2.6), dpi=90)
    for ax, (column, title) in zip(axes, CURVES):
        if steps is not None and column in steps:
            ax.plot(steps["step"], steps[column], linewidth=1)
            ax.set_xlabel("step", fontsize=8)
        else:
            ax.plot(epochs["step"] if steps is not None else epochs["epoch"], epochs[column], marker="o")
            ax.set_xlabel("step (end of each epoch)" if steps is not None else "epoch", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return png(fig)


def curves_markdown(curve_csv: Path, steps_csv: Path | None = None) -> dg.MetadataValue:
    return png_markdown(curves_png(curve_csv, steps_csv), "training curves")


def png_markdown(png: bytes, title: str) -> dg.MetadataValue:
    encoded = base64.b64encode(png).decode()
    return dg.MetadataValue.md(f"![{title}](data:image/png;base64,{encoded})")


def picture(path: Path, title: str) -> dg.MetadataValue:
    """A PNG a stage wrote, inline; a note instead when it is not there."""
    try:
        return png_markdown(Path(path).read_bytes(), title)
    except OSError:
        return dg.MetadataValue.md(f"*{title}: {path} is missing; materialize this asset again.*")
