"""The Keras side of a training run: the compiled model's optimizer, schedule and loss, and the callbacks that
commit every epoch (best checkpoint, early stopping, plateau, resume state) and honour Ctrl-C.

Imports Keras at module level: `train.train_model` imports this module only once it is about to train.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import keras

from cnnserve.training.checkpoint import TrainingState, save_epoch
from cnnserve.training.pipeline import EpochClock
from cnnserve.training.recipe import PLATEAU_FACTOR, PLATEAU_MIN_FRACTION, PLATEAU_PATIENCE, Recipe
from cnnserve.training.selection import Kept, consider
from cnnserve.training.zoo import ZooEntry

log = logging.getLogger(__name__)


def label_mode(entry: ZooEntry) -> str:
    """How labels reach the loss: "binary" (one sigmoid), "one_hot" (categorical CE) or "int" (sparse CE)."""
    if entry.output_kind == "sigmoid":
        return "binary"
    return "one_hot" if entry.loss == "categorical_crossentropy" else "int"


def learning_rate_for(recipe: Recipe, steps_per_epoch: int) -> Any:
    """The optimizer's learning rate: a number, or for "cosine" a decay to zero over every step of the run."""
    if recipe.schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(
            recipe.learning_rate, decay_steps=max(1, recipe.epochs * steps_per_epoch), alpha=0.0
        )
    return recipe.learning_rate


def compile_model(model: keras.Model, entry: ZooEntry, recipe: Recipe, steps_per_epoch: int) -> None:
    rate = learning_rate_for(recipe, steps_per_epoch)
    optimizers: dict[str, Callable[[], keras.Optimizer]] = {
        "adam": lambda: keras.optimizers.Adam(learning_rate=rate),
        "rmsprop": lambda: keras.optimizers.RMSprop(learning_rate=rate),
        "sgd": lambda: keras.optimizers.SGD(learning_rate=rate, momentum=0.9),
    }
    from_logits = entry.output_kind == "logits"
    mode = label_mode(entry)
    smoothing = recipe.label_smoothing
    if mode == "binary":
        loss: Any = keras.losses.BinaryCrossentropy(from_logits=from_logits, label_smoothing=smoothing)
        metric: Any = keras.metrics.BinaryAccuracy(name="accuracy", threshold=0.0 if from_logits else 0.5)
    elif mode == "one_hot":
        loss = keras.losses.CategoricalCrossentropy(from_logits=from_logits, label_smoothing=smoothing)
        metric = keras.metrics.CategoricalAccuracy(name="accuracy")
    else:
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits)
        metric = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
    model.compile(optimizer=optimizers[recipe.optimizer](), loss=loss, metrics=[metric])


def current_learning_rate(model: keras.Model) -> float:
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


class SetEpoch(keras.callbacks.Callback):
    """Tells the training pipeline which epoch begins, so its order and augmentation are the epoch's own."""

    def __init__(self, clock: EpochClock) -> None:
        super().__init__()
        self.clock = clock

    def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        self.clock.set(epoch)


class CommitEpoch(keras.callbacks.Callback):
    """After every epoch: record it, keep the best weights, apply early stopping and the plateau schedule,
    and commit the resume state (see `checkpoint.save_epoch`).

    Which epoch is kept is `selection.consider`'s rule over the `validation_images` images.
    """

    def __init__(
        self,
        run_dir: Path,
        state: TrainingState,
        recipe: Recipe,
        validation_images: int,
        clock_start: float,
        elapsed_before: float,
    ) -> None:
        super().__init__()
        self.run_dir = run_dir
        self.state = state
        self.recipe = recipe
        self.validation_images = validation_images
        self.clock_start = clock_start
        self.elapsed_before = elapsed_before

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        logs = dict(logs or {})
        state = self.state
        history = {key: list(values) for key, values in state.history.items()}
        for key, value in logs.items():
            history.setdefault(key, []).append(float(value))
        history.setdefault("learning_rate", []).append(current_learning_rate(self.model))
        accuracy, loss = float(logs.get("val_accuracy", math.nan)), float(logs.get("val_loss", math.inf))
        done = epoch + 1
        previous = None
        if state.best_epoch is not None:
            previous = Kept(
                state.best_epoch,
                state.best_accuracy if state.best_accuracy is not None else math.nan,
                state.best_loss if state.best_loss is not None else math.inf,
                state.top_accuracy if state.top_accuracy is not None else math.nan,
            )
        kept, improved = consider(previous, done, accuracy, loss, self.validation_images)
        state = replace(
            state,
            best_epoch=kept.epoch,
            best_accuracy=kept.accuracy,
            best_loss=kept.loss,
            top_accuracy=kept.top_accuracy,
            epochs_since_best=0 if improved else state.epochs_since_best + 1,
        )
        if self.recipe.patience is not None and state.epochs_since_best >= self.recipe.patience:
            state = replace(state, stopped_early=done < self.recipe.epochs)
            self.model.stop_training = True
            if done < self.recipe.epochs:
                log.info(
                    "early stopping after epoch %d: no better epoch in the last %d; keeping epoch %d",
                    done,
                    self.recipe.patience,
                    state.best_epoch,
                )
        if self.recipe.schedule == "plateau":
            state = self._plateau(state, loss)
        state = replace(
            state,
            epochs_done=done,
            history=history,
            elapsed_s=round(self.elapsed_before + time.monotonic() - self.clock_start, 3),
        )
        save_epoch(self.run_dir, self.model, state, improved)
        self.state = state

    def _plateau(self, state: TrainingState, loss: float) -> TrainingState:
        """Halve the rate after PLATEAU_PATIENCE epochs without a lower validation loss (down to a floor)."""
        if state.plateau_best_loss is None or loss < state.plateau_best_loss:
            return replace(state, plateau_best_loss=loss, plateau_wait=0)
        wait = state.plateau_wait + 1
        if wait < PLATEAU_PATIENCE:
            return replace(state, plateau_wait=wait)
        floor = self.recipe.learning_rate * PLATEAU_MIN_FRACTION
        rate = current_learning_rate(self.model)
        lowered = max(rate * PLATEAU_FACTOR, floor)
        if lowered < rate:
            self.model.optimizer.learning_rate.assign(lowered)
            log.info("validation loss on a plateau: learning rate %.3g -> %.3g", rate, lowered)
        return replace(state, plateau_wait=0)


class StopOnCtrlC(keras.callbacks.Callback):
    """Ends fit after the current batch once Ctrl-C was pressed (see `ctrl_c_stops`)."""

    requested = False

    def on_train_batch_end(self, batch: int, logs: dict[str, float] | None = None) -> None:
        if self.requested:
            self.model.stop_training = True


@contextlib.contextmanager
def ctrl_c_stops(stopper: StopOnCtrlC) -> Iterator[None]:
    """During fit, the first Ctrl-C asks the stopper to end training after the current batch.

    A KeyboardInterrupt raised wherever the signal lands can be swallowed (Python only prints an exception
    raised in a `__del__` or a weakref callback, and TensorFlow runs many), leaving training running; a
    flag checked after every batch cannot be lost. A second Ctrl-C interrupts at once. Outside the main
    thread (where signals cannot be handled) Python's default behaviour stays.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def request_stop(signum: int, frame: Any) -> None:
        if stopper.requested:
            raise KeyboardInterrupt
        stopper.requested = True
        log.warning("Ctrl-C: stopping after this batch (press again to abort now)")

    previous = signal.signal(signal.SIGINT, request_stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
