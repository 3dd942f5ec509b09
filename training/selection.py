"""Which epoch a run keeps as `model.keras`, decided epoch by epoch from the validation metrics.

Validation accuracy is what a classifier is judged on, but on a few hundred validation images it is coarse:
at 99% on 400 digits its standard error is 0.5 points (two digits), so the epoch with the single highest
accuracy is often a lucky one. The rule: an epoch qualifies when its validation accuracy is within one
standard error of the highest seen so far; among qualifying epochs the lowest validation loss (a
finer-grained measure over the same images) wins. An epoch replaces the kept one when it qualifies and
either has a lower loss or the kept one no longer qualifies. Measured on `mnist_cnn` (cosine schedule): the
highest-accuracy epoch was as early as 16 of 30 where the loss was still falling; this rule keeps one of the
last epochs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Kept:
    """The epoch kept so far (1-based), its validation metrics, and the highest accuracy seen."""

    epoch: int
    accuracy: float
    loss: float
    top_accuracy: float


def standard_error(accuracy: float, images: int) -> float:
    """The binomial standard error of an accuracy measured on `images` images (at least one image's worth)."""
    images = max(1, images)
    return math.sqrt(max(accuracy * (1.0 - accuracy), 1.0 / images) / images)


def consider(kept: Kept | None, epoch: int, accuracy: float, loss: float, images: int) -> tuple[Kept, bool]:
    """The kept epoch after `epoch` (1-based) scored `accuracy`/`loss` on `images` validation images, and
    whether `epoch` is now the one kept."""
    if kept is None:
        return Kept(epoch, accuracy, loss, accuracy), True
    top = max(kept.top_accuracy, accuracy)
    band = top - standard_error(top, images)
    if accuracy >= band and (kept.accuracy < band or loss < kept.loss):
        return Kept(epoch, accuracy, loss, top), True
    return Kept(kept.epoch, kept.accuracy, kept.loss, top), False


def kept_epoch(accuracies: list[float], losses: list[float], images: int) -> int | None:
    """The epoch (1-based) the rule keeps over a whole history."""
    kept: Kept | None = None
    for epoch, (accuracy, loss) in enumerate(zip(accuracies, losses, strict=True), start=1):
        kept, _ = consider(kept, epoch, accuracy, loss, images)
    return None if kept is None else kept.epoch
