"""The run directory: what a training job leaves on disk and what the export stage reads back.

A run directory holds `model.keras` (the best epoch by validation, see `selection.py`), `run.json` (everything
needed to reproduce and describe the run: model, dataset and provenance, splits, seed, the recipe, history,
test metrics, preprocessing, labels, library versions) and three figures. While training it also holds
`checkpoint/` (the last epoch's full state, for `--resume`), removed once the run completes. `RunInfo`
mirrors `run.json` field by field so readers never parse the JSON themselves.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnnserve.training.recipe import DEFAULT_LEARNING_RATES, Recipe
from cnnserve.training.zoo import Preprocessing

RUN_JSON = "run.json"
MODEL_FILE = "model.keras"
HISTORY_PNG = "history.png"
MISCLASSIFIED_PNG = "misclassified.png"
CONFUSION_PNG = "confusion_matrix.png"
CHECKPOINT_DIR = "checkpoint"
FORMAT_VERSION = 2


class RunDirectoryError(Exception):
    """A run directory that is missing, incomplete or unreadable; the message names what is wrong."""


@dataclass(frozen=True)
class DatasetInfo:
    """Which data a run trained on, and how to find and split it again (for export's samples)."""

    kind: str  # "mnist-bundled" | "mnist-npz" | "idx" | "cifar10" | "image-folders" | "kaggle-flat"
    path: str | None  # absolute path as given (None for the bundled digits)
    provenance: str  # a human sentence: where the data came from
    split_seed: int  # the seed the train/validation/test split was drawn with
    test_split: str = "test"  # which split the test metrics came from ("validation" if there was no test)
    validation_split: float | None = None  # fraction of training images held out; None: the data's own


@dataclass(frozen=True)
class RunInfo:
    """Everything `run.json` records about one training run."""

    model: str
    status: str  # "completed" | "interrupted" | "untrained"
    dataset: DatasetInfo
    split_sizes: Mapping[str, int]
    seed: int
    recipe: Recipe  # epochs requested, batch size, optimizer, learning rate, schedule, patience, augmentation
    epochs_completed: int
    loss: str
    history: Mapping[str, list[float]]
    best_epoch: int | None  # 1-based epoch whose weights are in model.keras
    test_accuracy: float | None
    test_loss: float | None
    params: int
    input_shape: tuple[int, ...]
    num_classes: int
    output_kind: str
    labels: tuple[str, ...]
    preprocessing: Preprocessing
    versions: Mapping[str, str]
    wall_time_s: float
    skipped_files: tuple[str, ...] = ()
    created_at: str = ""
    notes: str = ""
    init_from: str | None = None  # the run directory whose weights training started from
    resumed_at_epochs: tuple[int, ...] = ()  # epochs (0-based) at which an interrupted run was resumed
    stopped_early: bool = False
    run_dir: Path | None = field(default=None, compare=False)

    @property
    def skipped_count(self) -> int:
        return len(self.skipped_files)

    @property
    def epochs(self) -> int:
        return self.recipe.epochs

    @property
    def batch_size(self) -> int:
        return self.recipe.batch_size

    @property
    def augmentation(self) -> str:
        return self.recipe.augmentation

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "model": self.model,
            "status": self.status,
            "dataset": {
                "kind": self.dataset.kind,
                "path": self.dataset.path,
                "provenance": self.dataset.provenance,
                "split_seed": self.dataset.split_seed,
                "test_split": self.dataset.test_split,
                "validation_split": self.dataset.validation_split,
            },
            "split_sizes": dict(self.split_sizes),
            "seed": self.seed,
            **self.recipe.to_dict(),
            "epochs_completed": self.epochs_completed,
            "loss": self.loss,
            "init_from": self.init_from,
            "resumed_at_epochs": list(self.resumed_at_epochs),
            "stopped_early": self.stopped_early,
            "history": {key: list(values) for key, values in self.history.items()},
            "best_epoch": self.best_epoch,
            "test_accuracy": self.test_accuracy,
            "test_loss": self.test_loss,
            "params": self.params,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "output_kind": self.output_kind,
            "labels": list(self.labels),
            "preprocessing": self.preprocessing.to_dict(),
            "versions": dict(self.versions),
            "wall_time_s": self.wall_time_s,
            "skipped_files": list(self.skipped_files),
            "skipped_count": self.skipped_count,
            "created_at": self.created_at,
            "notes": self.notes,
            "files": {
                "model": MODEL_FILE,
                "history": HISTORY_PNG,
                "misclassified": MISCLASSIFIED_PNG,
                "confusion_matrix": CONFUSION_PNG,
            },
        }

    @classmethod
    def from_json_dict(cls, data: Mapping[str, Any], run_dir: Path | None = None) -> RunInfo:
        dataset = data["dataset"]
        optimizer = str(data.get("optimizer", "adam"))
        learning_rate = data.get("learning_rate")
        # Runs written before the recipe fields existed trained with a constant rate and no early stopping.
        recipe = Recipe.from_dict(
            {
                "epochs": data["epochs"],
                "batch_size": data["batch_size"],
                "optimizer": optimizer,
                "learning_rate": DEFAULT_LEARNING_RATES.get(optimizer, 1e-3)
                if learning_rate is None
                else learning_rate,
                "schedule": data.get("schedule", "constant"),
                "patience": data.get("patience"),
                "augmentation": data.get("augmentation", "none"),
                "validation_split": data.get("validation_split"),
                "label_smoothing": data.get("label_smoothing", 0.0),
            }
        )
        return cls(
            model=str(data["model"]),
            status=str(data.get("status", "completed")),
            dataset=DatasetInfo(
                kind=str(dataset["kind"]),
                path=dataset.get("path"),
                provenance=str(dataset.get("provenance", "")),
                split_seed=int(dataset.get("split_seed", data.get("seed", 0))),
                test_split=str(dataset.get("test_split", "test")),
                validation_split=dataset.get("validation_split"),
            ),
            split_sizes={str(k): int(v) for k, v in data["split_sizes"].items()},
            seed=int(data["seed"]),
            recipe=recipe,
            epochs_completed=int(data.get("epochs_completed", data["epochs"])),
            loss=str(data.get("loss", "")),
            history={str(k): [float(x) for x in v] for k, v in data.get("history", {}).items()},
            best_epoch=data.get("best_epoch"),
            test_accuracy=data.get("test_accuracy"),
            test_loss=data.get("test_loss"),
            params=int(data["params"]),
            input_shape=tuple(int(x) for x in data["input_shape"]),
            num_classes=int(data["num_classes"]),
            output_kind=str(data["output_kind"]),
            labels=tuple(str(x) for x in data["labels"]),
            preprocessing=Preprocessing.from_dict(data["preprocessing"]),
            versions={str(k): str(v) for k, v in data.get("versions", {}).items()},
            wall_time_s=float(data.get("wall_time_s", 0.0)),
            skipped_files=tuple(str(x) for x in data.get("skipped_files", [])),
            created_at=str(data.get("created_at", "")),
            notes=str(data.get("notes", "")),
            init_from=data.get("init_from"),
            resumed_at_epochs=tuple(int(x) for x in data.get("resumed_at_epochs", [])),
            stopped_early=bool(data.get("stopped_early", False)),
            run_dir=run_dir,
        )


def model_path(run_dir: str | Path) -> Path:
    """Where a run directory keeps its best checkpoint."""
    return Path(run_dir) / MODEL_FILE


def run_json_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / RUN_JSON


def checkpoint_dir(run_dir: str | Path) -> Path:
    """Where a run that is still training keeps its last epoch's full state (see `training.checkpoint`)."""
    return Path(run_dir) / CHECKPOINT_DIR


def write_run(run_dir: str | Path, info: RunInfo) -> Path:
    """Write `run.json` atomically (a half-written file never replaces a good one)."""
    path = run_json_path(run_dir)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(info.to_json_dict(), indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def load_run(run_dir: str | Path, *, require_model: bool = True) -> RunInfo:
    """Read a run directory; `RunDirectoryError` names what is missing or unreadable."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirectoryError(f"run directory {run_dir} does not exist (or is not a directory)")
    json_path = run_json_path(run_dir)
    if not json_path.is_file():
        raise RunDirectoryError(
            f"run directory {run_dir} has no {RUN_JSON}; is it a `cnnserve train` output?"
        )
    if require_model and not model_path(run_dir).is_file():
        raise RunDirectoryError(f"run directory {run_dir} has no {MODEL_FILE} (training saved no checkpoint)")
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RunDirectoryError(f"{json_path} is not readable JSON: {error}") from error
    if not isinstance(data, dict):
        raise RunDirectoryError(f"{json_path} does not hold a JSON object")
    try:
        return RunInfo.from_json_dict(data, run_dir=run_dir)
    except (KeyError, TypeError, ValueError) as error:
        raise RunDirectoryError(f"{json_path} lacks or mangles field {error}") from error
