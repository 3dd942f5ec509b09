"""What a run leaves after every epoch so that `--resume` continues it exactly where it stopped.

`checkpoint/` in the run directory holds the last finished epoch's full model (weights and optimizer
state, which carries the schedule's position and the current learning rate) and `state.json`: the options
the run was started with, the history so far, the best epoch, the early-stopping and plateau counters and
the wall time spent. `state.json` is the commit point: it is replaced atomically after the epoch's model
file is complete, and names that file, so a process killed at any instant leaves a consistent state.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cnnserve.training.errors import ResumeError
from cnnserve.training.recipe import Recipe
from cnnserve.training.rundir import (
    RUN_JSON,
    RunDirectoryError,
    checkpoint_dir,
    load_run,
    model_path,
)

STATE_JSON = "state.json"
STATE_VERSION = 1


@dataclass(frozen=True)
class StartOptions:
    """What a run was started with; a resumed run must be asked for nothing else."""

    model: str
    data: str | None  # absolute dataset path, None for the entry's default data
    seed: int
    recipe: Recipe
    init_from: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "data": self.data,
            "seed": self.seed,
            "recipe": self.recipe.to_dict(),
            "init_from": self.init_from,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StartOptions:
        return cls(
            model=str(data["model"]),
            data=data.get("data"),
            seed=int(data["seed"]),
            recipe=Recipe.from_dict(dict(data["recipe"])),
            init_from=data.get("init_from"),
        )


@dataclass(frozen=True)
class TrainingState:
    """The run after `epochs_done` epochs: everything the training loop needs to carry on."""

    options: StartOptions
    epochs_done: int = 0
    history: Mapping[str, list[float]] = field(default_factory=dict)
    best_epoch: int | None = None  # 1-based
    best_accuracy: float | None = None
    best_loss: float | None = None
    top_accuracy: float | None = None  # the highest validation accuracy of any epoch so far
    epochs_since_best: int = 0
    plateau_best_loss: float | None = None
    plateau_wait: int = 0
    stopped_early: bool = False
    elapsed_s: float = 0.0
    resumed_at_epochs: tuple[int, ...] = ()
    model_file: str | None = None  # the last finished epoch's model, inside checkpoint/

    def to_dict(self) -> dict[str, Any]:
        return {
            "state_version": STATE_VERSION,
            "options": self.options.to_dict(),
            "epochs_done": self.epochs_done,
            "history": {key: list(values) for key, values in self.history.items()},
            "best_epoch": self.best_epoch,
            "best_accuracy": self.best_accuracy,
            "best_loss": self.best_loss,
            "top_accuracy": self.top_accuracy,
            "epochs_since_best": self.epochs_since_best,
            "plateau_best_loss": self.plateau_best_loss,
            "plateau_wait": self.plateau_wait,
            "stopped_early": self.stopped_early,
            "elapsed_s": self.elapsed_s,
            "resumed_at_epochs": list(self.resumed_at_epochs),
            "model_file": self.model_file,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainingState:
        return cls(
            options=StartOptions.from_dict(data["options"]),
            epochs_done=int(data["epochs_done"]),
            history={str(k): [float(x) for x in v] for k, v in data["history"].items()},
            best_epoch=data.get("best_epoch"),
            best_accuracy=data.get("best_accuracy"),
            best_loss=data.get("best_loss"),
            top_accuracy=data.get("top_accuracy"),
            epochs_since_best=int(data.get("epochs_since_best", 0)),
            plateau_best_loss=data.get("plateau_best_loss"),
            plateau_wait=int(data.get("plateau_wait", 0)),
            stopped_early=bool(data.get("stopped_early", False)),
            elapsed_s=float(data.get("elapsed_s", 0.0)),
            resumed_at_epochs=tuple(int(x) for x in data.get("resumed_at_epochs", [])),
            model_file=data.get("model_file"),
        )

    def resumed(self) -> TrainingState:
        return replace(self, resumed_at_epochs=(*self.resumed_at_epochs, self.epochs_done))


def _atomic_write_json(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(data, indent=2) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)


def _atomic_copy(source: Path, target: Path) -> None:
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.copyfile(source, tmp)
    tmp.replace(target)


def epoch_model_name(epoch: int) -> str:
    return f"epoch-{epoch:04d}.keras"


def save_epoch(run_dir: Path, model: Any, state: TrainingState, improved: bool) -> None:
    """Commit one finished epoch: its model file, then `state.json`, then (if best so far) `model.keras`.

    Older epoch files are removed only after the commit, so the file `state.json` names always exists.
    """
    folder = checkpoint_dir(run_dir)
    folder.mkdir(exist_ok=True)
    name = epoch_model_name(state.epochs_done)
    model.save(folder / name)
    _atomic_write_json(folder / STATE_JSON, replace(state, model_file=name).to_dict())
    if improved:
        _atomic_copy(folder / name, model_path(run_dir))
    for stale in folder.glob("epoch-*.keras"):
        if stale.name != name:
            stale.unlink(missing_ok=True)


def sync_best(run_dir: Path, state: TrainingState) -> None:
    """Bring `model.keras` in line with the state (a process killed between the two steps of a best epoch)."""
    if state.model_file is not None and state.best_epoch == state.epochs_done:
        _atomic_copy(checkpoint_dir(run_dir) / state.model_file, model_path(run_dir))


def load_state(run_dir: Path) -> TrainingState:
    """The state of an interrupted run; `ResumeError` says why a run cannot be resumed."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ResumeError(f"--resume: there is no run directory {run_dir}")
    status = None
    if (run_dir / RUN_JSON).is_file():
        try:
            status = load_run(run_dir, require_model=False).status
        except RunDirectoryError:
            status = "unreadable"
    if status == "completed":
        raise ResumeError(f"--resume: the run in {run_dir} already completed; nothing to resume")
    state_file = checkpoint_dir(run_dir) / STATE_JSON
    if not state_file.is_file():
        if status is not None:
            raise ResumeError(f"--resume: the run in {run_dir} ({status}) left no checkpoint to resume from")
        raise ResumeError(f"--resume: {run_dir} holds no interrupted training run (no {STATE_JSON})")
    try:
        data = json.loads(state_file.read_text(encoding="utf-8"))
        state = TrainingState.from_dict(data)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise ResumeError(f"--resume: {state_file} is not a readable training state ({error})") from error
    if state.model_file is None or not (checkpoint_dir(run_dir) / state.model_file).is_file():
        raise ResumeError(f"--resume: {state_file} names no model file that exists")
    return state


def remove_checkpoint(run_dir: Path) -> None:
    """A completed run needs no resume state."""
    shutil.rmtree(checkpoint_dir(run_dir), ignore_errors=True)
