"""Pictures for the asset pages: the training curves, drawn here, and the pictures the
stages leave in metrics/. pipelines/figures.py decides how the UI gets them (inline from the
figure server, or embedded)."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pandas as pd

from pipelines.figures import markdown_image

CURVES = (("loss", "BYOL loss"), ("knn_top1", "kNN top-1 (monitor)"), ("tau", "target EMA tau"),
          ("lr", "learning rate"), ("collapse_std", "collapse std"))


def curves_png(curve_csv: Path, steps_csv: Path | None = None) -> bytes:
    """One small chart per curve: per logged step from ``pretrain_steps.csv`` when given
    (the kNN monitor runs once per epoch, so it stays per epoch), else per epoch."""
    from byol_core.pictures import png, pyplot

    plt = pyplot()
    epochs = pd.read_csv(curve_csv)
    steps = pd.read_csv(steps_csv) if steps_csv is not None and Path(steps_csv).is_file() else None
    # Two across, under 500 px wide: the picture fits the metadata column of the asset page's
    # Overview in a 1600 px window (the Events tab is wider).
    rows = -(-len(CURVES) // 2)
    fig, axes = plt.subplots(rows, 2, figsize=(5.4, 2.1 * rows), dpi=90, squeeze=False)
    for ax in axes.flat[len(CURVES):]:
        ax.set_visible(False)
    for ax, (column, title) in zip(axes.flat, CURVES):
        if steps is not None and column in steps:
            ax.plot(steps["step"], steps[column], linewidth=1)
            ax.set_xlabel("step", fontsize=8)
        else:
            ax.plot(epochs["step"] if steps is not None else epochs["epoch"], epochs[column], marker="o")
            ax.set_xlabel("step (end of each epoch)" if steps is not None else "epoch", fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return png(fig)


def curves_markdown(curve_csv: Path, steps_csv: Path | None = None) -> dg.MetadataValue:
    return png_markdown(curves_png(curve_csv, steps_csv), "training curves")


def png_markdown(png: bytes, title: str) -> dg.MetadataValue:
    return dg.MetadataValue.md(markdown_image(png, title))


def picture(path: Path, title: str) -> dg.MetadataValue:
    """A PNG a stage wrote, inline; a note instead when it is not there."""
    try:
        return png_markdown(Path(path).read_bytes(), title)
    except OSError:
        return dg.MetadataValue.md(f"*{title}: {path} is missing; materialize this asset again.*")
