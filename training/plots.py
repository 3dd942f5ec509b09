"""The run directory's figures: learning curves, misclassified test images, confusion matrix.

Figures are built with `matplotlib.figure.Figure` and saved through the Agg canvas, never pyplot, so no
display and no global figure state is involved.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def plot_history(
    history: Mapping[str, Sequence[float]],
    path: str | Path,
    title: str = "",
    best_epoch: int | None = None,
) -> Path:
    """Loss and accuracy per epoch, training and validation side by side, the kept epoch marked; and the
    learning rate when the run recorded it."""
    rates = history.get("learning_rate")
    panels = ("loss", "accuracy", "learning_rate") if rates else ("loss", "accuracy")
    figure = _figure(5 * len(panels), 4)
    for position, metric in enumerate(panels, start=1):
        axes = figure.add_subplot(1, len(panels), position)
        for key, style in ((metric, "o-"), (f"val_{metric}", "s--")):
            values = history.get(key)
            if values:
                label = "validation" if key.startswith("val_") else "train"
                if metric == "learning_rate":
                    label = "learning rate"
                axes.plot(range(1, len(values) + 1), values, style, label=label)
        if metric == "learning_rate":
            axes.set_yscale("log")
        if best_epoch is not None:
            axes.axvline(best_epoch, color="grey", linestyle=":", label=f"kept: epoch {best_epoch}")
        axes.set_xlabel("epoch")
        axes.set_ylabel(metric.replace("_", " "))
        axes.set_title(metric.replace("_", " "))
        axes.grid(True, alpha=0.3)
        if axes.lines:
            axes.legend()
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path)
    return Path(path)


def plot_misclassified(
    images: np.ndarray,
    true: np.ndarray,
    predicted: np.ndarray,
    labels: Sequence[str],
    path: str | Path,
    total_wrong: int | None = None,
) -> Path:
    """A grid of wrongly classified test images, each captioned with predicted vs true label.

    The grid is one mosaic image in one axes (25 separate axes take seconds to lay out and draw).
    """
    count = len(images)
    columns = min(5, max(count, 1))
    rows = max(1, math.ceil(count / columns))
    figure = _figure(2.2 * columns, 2.4 * rows + 0.4)
    axes = figure.add_axes((0.0, 0.0, 1.0, 1 - 0.4 / figure.get_figheight()))
    axes.axis("off")
    if count == 0:
        axes.text(
            0.5, 0.5, "no misclassified test images", ha="center", va="center", transform=axes.transAxes
        )
    else:
        tiles = np.asarray(images)
        if tiles.ndim == 4 and tiles.shape[-1] == 1:
            tiles = tiles[..., 0]
        if tiles.ndim == 3:  # grayscale → RGB so one mosaic holds any image kind
            tiles = np.repeat(tiles[..., None], 3, axis=-1)
        height, width = tiles.shape[1:3]
        caption = max(6, height // 3)  # white band above each tile for its caption
        pad = max(2, height // 14)
        cell_h, cell_w = caption + height + pad, width + pad
        mosaic = np.full((rows * cell_h, columns * cell_w, 3), 255, np.uint8)
        for i in range(count):
            r, c = divmod(i, columns)
            top, left = r * cell_h + caption, c * cell_w
            mosaic[top : top + height, left : left + width] = tiles[i]
        axes.imshow(mosaic, interpolation="nearest")
        for i in range(count):
            r, c = divmod(i, columns)
            axes.text(
                c * cell_w + width / 2,
                r * cell_h + caption - 1,
                f"pred {labels[predicted[i]]}\ntrue {labels[true[i]]}",
                ha="center",
                va="bottom",
                fontsize=9,
                color="crimson",
            )
    shown = f"{count} of {total_wrong}" if total_wrong is not None else str(count)
    figure.suptitle(f"misclassified test images ({shown})")
    figure.savefig(path)
    return Path(path)


def confusion_matrix(true: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts[i, j]: test images of true class i predicted as class j."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (true.astype(np.int64), predicted.astype(np.int64)), 1)
    return matrix


def plot_confusion_matrix(matrix: np.ndarray, labels: Sequence[str], path: str | Path) -> Path:
    n = len(labels)
    size = max(4.0, 0.6 * n + 2)
    figure = _figure(size, size)
    axes = figure.add_subplot(1, 1, 1)
    image = axes.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    axes.set_xticks(range(n), labels=list(labels), rotation=45, ha="right")
    axes.set_yticks(range(n), labels=list(labels))
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    threshold = matrix.max() / 2 if matrix.size else 0
    for i in range(n):
        for j in range(n):
            axes.text(
                j,
                i,
                str(matrix[i, j]),
                ha="center",
                va="center",
                fontsize=8,
                color="white" if matrix[i, j] > threshold else "black",
            )
    axes.set_title("confusion matrix (test)")
    figure.tight_layout()
    figure.savefig(path)
    return Path(path)
