"""The training recipe: every knob of `cnnserve train`, resolved against the zoo entry's defaults and checked.

A `Recipe` is what `run.json` records under `recipe`, what a resumed run must match, and what the training
loop reads; nothing else decides how a model is trained. Checking happens here, before any data is read or
any file written, so a bad option costs nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from cnnserve.training.augment import AUGMENTATIONS
from cnnserve.training.errors import TrainingError
from cnnserve.training.zoo import ZooEntry

SCHEDULES = ("constant", "cosine", "plateau")
OPTIMIZERS = ("adam", "rmsprop", "sgd")
# Keras' defaults for Adam and RMSprop; SGD (with momentum 0.9) wants a larger step.
DEFAULT_LEARNING_RATES = {"adam": 1e-3, "rmsprop": 1e-3, "sgd": 1e-2}
# The plateau schedule halves the learning rate after this many epochs without a lower validation loss,
# down to 1/64 of where it started.
PLATEAU_FACTOR = 0.5
PLATEAU_PATIENCE = 2
PLATEAU_MIN_FRACTION = 1 / 64
MAX_VALIDATION_SPLIT = 0.5


@dataclass(frozen=True)
class Recipe:
    """How one run trains. `patience` None: no early stopping; `validation_split` None: the data's own."""

    epochs: int
    batch_size: int
    optimizer: str
    learning_rate: float
    schedule: str
    patience: int | None
    augmentation: str  # the augmentation applied ("none" when off)
    validation_split: float | None
    label_smoothing: float = 0.0

    @property
    def augment(self) -> bool:
        return self.augmentation != "none"

    def to_dict(self) -> dict[str, Any]:
        return {
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "optimizer": self.optimizer,
            "learning_rate": self.learning_rate,
            "schedule": self.schedule,
            "patience": self.patience,
            "augment": self.augment,
            "augmentation": self.augmentation,
            "validation_split": self.validation_split,
            "label_smoothing": self.label_smoothing,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recipe:
        patience = data.get("patience")
        split = data.get("validation_split")
        return cls(
            epochs=int(data["epochs"]),
            batch_size=int(data["batch_size"]),
            optimizer=str(data["optimizer"]),
            learning_rate=float(data["learning_rate"]),
            schedule=str(data["schedule"]),
            patience=None if patience is None else int(patience),
            augmentation=str(data["augmentation"]),
            validation_split=None if split is None else float(split),
            label_smoothing=float(data.get("label_smoothing", 0.0)),
        )


def default_recipe(entry: ZooEntry) -> Recipe:
    """What `cnnserve train NAME` does with no options."""
    return resolve_recipe(entry)


def resolve_recipe(
    entry: ZooEntry,
    *,
    epochs: int | None = None,
    batch_size: int | None = None,
    learning_rate: float | None = None,
    schedule: str | None = None,
    patience: int | None = None,
    augment: bool | None = None,
    validation_split: float | None = None,
) -> Recipe:
    """The entry's defaults with the given options on top; `TrainingError` names the first bad option.

    `patience` 0 turns early stopping off; `augment` True applies the augmentation the entry's data takes.
    """
    epochs = entry.epochs if epochs is None else epochs
    batch_size = entry.batch_size if batch_size is None else batch_size
    if entry.optimizer not in OPTIMIZERS:
        raise TrainingError(f"model {entry.name}: unknown optimizer {entry.optimizer!r}")
    if learning_rate is None:
        learning_rate = entry.learning_rate or DEFAULT_LEARNING_RATES[entry.optimizer]
    schedule = entry.schedule if schedule is None else schedule
    patience = entry.patience if patience is None else (patience or None)
    augment = entry.augment if augment is None else augment
    if epochs < 1:
        raise TrainingError(f"epochs must be at least 1, not {epochs}")
    if batch_size < 1:
        raise TrainingError(f"batch size must be at least 1, not {batch_size}")
    if not (math.isfinite(learning_rate) and learning_rate > 0):
        raise TrainingError(f"--lr must be a positive number, not {learning_rate:g}")
    if schedule not in SCHEDULES:
        raise TrainingError(f"unknown --schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    if patience is not None and patience < 0:
        raise TrainingError(f"--patience must be 0 (off) or a number of epochs, not {patience}")
    if validation_split is not None and not (0 < validation_split <= MAX_VALIDATION_SPLIT):
        raise TrainingError(
            f"--validation-split must be in (0, {MAX_VALIDATION_SPLIT}], not {validation_split:g}"
        )
    if entry.augmentation not in AUGMENTATIONS:
        raise TrainingError(f"model {entry.name}: unknown augmentation {entry.augmentation!r}")
    return Recipe(
        epochs=epochs,
        batch_size=batch_size,
        optimizer=entry.optimizer,
        learning_rate=float(learning_rate),
        schedule=schedule,
        patience=patience,
        augmentation=entry.augmentation if augment else "none",
        validation_split=validation_split,
        label_smoothing=entry.label_smoothing,
    )
