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


def plot_history(history: Mapping[str, Sequence[float]], path: str | Path, title: str = "") -> Path:
    """Loss and accuracy per epoch, training and validation side by side."""
    figure = _figure(10, 4)
    for position, metric in enumerate(("loss", "accuracy"), start=1):
        axes = figure.add_subplot(1, 2, position)
        for key, style in ((metric, "o-"), (f"val_{metric}", "s--")):
            values = history.get(key)
            if values:
                axes.plot(
                    range(1, len(values) + 1), values, style, label="validation" if "val" in key else "train"
                )
        axes.set_xlabel("epoch")
        axes.set_ylabel(metric)
        axes.set_title(metric)
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
    """A grid of wrongly classified test images, each titled with predicted vs true label."""
    count = len(images)
    columns = min(5, max(count, 1))
    rows = max(1, math.ceil(count / columns))
    figure = _figure(2.2 * columns, 2.4 * rows + 0.4)
    if count == 0:
        axes = figure.add_subplot(1, 1, 1)
        axes.axis("off")
        axes.text(0.5, 0.5, "no misclassified test images", ha="center", va="center")
    for i in range(count):
        axes = figure.add_subplot(rows, columns, i + 1)
        image = images[i]
        if image.ndim == 3 and image.shape[-1] == 1:
            image = image[..., 0]
        axes.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=255)
        axes.set_title(f"pred {labels[predicted[i]]}\ntrue {labels[true[i]]}", fontsize=9, color="crimson")
        axes.axis("off")
    shown = f"{count} of {total_wrong}" if total_wrong is not None else str(count)
    figure.suptitle(f"misclassified test images ({shown})")
    # A fixed layout: tight_layout over 25 small axes costs seconds and gains nothing here.
    figure.subplots_adjust(
        left=0.02, right=0.98, bottom=0.02, top=1 - 0.45 / figure.get_figheight(), hspace=0.45
    )
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
