"""Labelled folders: when the sub-folders are named after the model's classes, score the job.

A folder whose top-level sub-folders are all class labels (the Keras `image_dataset_from_directory`
layout) is ground truth for free: the summary then carries accuracy and per-class precision/recall, and
`confusion_matrix.png` and `misclassified.png` are written next to the output. The pictures need
matplotlib, which the serving image does not have: there the summary keeps the metrics and says why no
picture was drawn.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cnnserve.serving.jobs.sinks import read_table

LOG = logging.getLogger(__name__)

CONFUSION_FILENAME = "confusion_matrix.png"
MISCLASSIFIED_FILENAME = "misclassified.png"
MAX_MISCLASSIFIED_SHOWN = 36


@dataclass(frozen=True)
class Evaluation:
    metrics: dict[str, Any]
    confusion: np.ndarray  # [true, predicted]
    pictures: tuple[Path, ...]


def labelled_classes(folder: Path, labels: Sequence[str]) -> list[str] | None:
    """The class sub-folders when every visible sub-folder is a label (at least one); None otherwise."""
    try:
        with os.scandir(folder) as listing:
            names = sorted(e.name for e in listing if e.is_dir() and not e.name.startswith("."))
    except OSError:
        return None
    if not names or not set(names) <= set(labels):
        return None
    return names


def compute_metrics(
    true: Sequence[int], predicted: Sequence[int], labels: Sequence[str]
) -> tuple[dict[str, Any], np.ndarray]:
    """Accuracy, per-class precision/recall/support and the confusion matrix (rows: true class)."""
    count = len(labels)
    confusion = np.zeros((count, count), dtype=np.int64)
    for t, p in zip(true, predicted, strict=True):
        confusion[t, p] += 1
    evaluated = int(confusion.sum())
    correct = int(np.trace(confusion))
    per_class: dict[str, dict[str, float | int]] = {}
    for index, label in enumerate(labels):
        support = int(confusion[index].sum())
        predicted_as = int(confusion[:, index].sum())
        if support == 0 and predicted_as == 0:
            continue
        tp = int(confusion[index, index])
        per_class[label] = {
            "precision": tp / predicted_as if predicted_as else 0.0,
            "recall": tp / support if support else 0.0,
            "support": support,
        }
    metrics = {
        "evaluated": evaluated,
        "correct": correct,
        "accuracy": correct / evaluated if evaluated else 0.0,
        "per_class": per_class,
    }
    return metrics, confusion


def _pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend, or None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def plot_confusion(plt: Any, confusion: np.ndarray, labels: Sequence[str], path: Path, title: str) -> Path:
    size = max(4.0, 0.6 * len(labels) + 2)
    figure, axes = plt.subplots(figsize=(size, size))
    image = axes.imshow(confusion, cmap="Blues")
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    axes.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    axes.set_yticks(range(len(labels)), labels)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true (folder)")
    axes.set_title(title)
    threshold = confusion.max() / 2 if confusion.size else 0
    for (row, col), value in np.ndenumerate(confusion):
        axes.text(
            col,
            row,
            str(value),
            ha="center",
            va="center",
            color="white" if value > threshold else "black",
            fontsize=8,
        )
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_misclassified(
    plt: Any, folder: Path, mistakes: Sequence[tuple[str, str, str, float]], path: Path, title: str
) -> Path:
    """A grid of misclassified images, each titled `true → predicted (score)`."""
    from PIL import Image

    shown = list(mistakes[:MAX_MISCLASSIFIED_SHOWN])
    columns = max(1, min(6, len(shown)))
    rows = max(1, -(-len(shown) // columns))
    figure, axes_grid = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.4 * rows + 0.5), squeeze=False)
    for axes in axes_grid.flat:
        axes.axis("off")
    for axes, (relative, true_label, predicted, score) in zip(axes_grid.flat, shown, strict=False):
        try:
            with Image.open(folder / relative) as image:
                image.thumbnail((256, 256))
                pixels = np.asarray(image.convert("RGB"))
            axes.imshow(pixels)
        except Exception as error:  # the row was classified, but the file may have changed since
            axes.text(0.5, 0.5, f"unreadable:\n{type(error).__name__}", ha="center", va="center")
        axes.set_title(f"{true_label} → {predicted} ({score:.2f})", fontsize=9)
    if not shown:
        axes_grid[0, 0].text(0.5, 0.5, "no misclassified images", ha="center", va="center")
    figure.suptitle(
        f"{title}: {len(mistakes)} misclassified"
        + (f" (first {len(shown)} shown)" if len(mistakes) > len(shown) else "")
    )
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def evaluate_output(folder: Path, output: Path, labels: Sequence[str], top_k: int = 1) -> Evaluation | None:
    """Score a finished output against its folder's class sub-folders; None when the folder is unlabelled."""
    classes = labelled_classes(folder, labels)
    if classes is None:
        return None
    index_of = {label: i for i, label in enumerate(labels)}
    true: list[int] = []
    predicted: list[int] = []
    mistakes: list[tuple[str, str, str, float]] = []
    for record in sorted(read_table(output), key=lambda r: r["path"]):
        parts = record["path"].split("/")
        if (
            len(parts) < 2
            or parts[0] not in index_of
            or record.get("error")
            or record.get("index") in (None, "")
        ):
            continue
        t = index_of[parts[0]]
        p = int(record["index"])
        true.append(t)
        predicted.append(p)
        if t != p:
            mistakes.append((record["path"], parts[0], str(record["label"]), float(record["score"])))
    metrics, confusion = compute_metrics(true, predicted, labels)
    title = output.name
    plt = _pyplot()
    if plt is None:
        LOG.info(
            "no confusion_matrix.png or misclassified.png: matplotlib is not installed "
            "(pip install matplotlib to draw them); the metrics are in the summary"
        )
        pictures: tuple[Path, ...] = ()
    else:
        pictures = (
            plot_confusion(
                plt,
                confusion,
                labels,
                output.parent / CONFUSION_FILENAME,
                f"{title}: accuracy {metrics['accuracy']:.4f}",
            ),
            plot_misclassified(plt, folder, mistakes, output.parent / MISCLASSIFIED_FILENAME, title),
        )
    LOG.info("labelled folder: accuracy %.4f over %d images", metrics["accuracy"], metrics["evaluated"])
    return Evaluation(metrics=metrics, confusion=confusion, pictures=pictures)
