"""Quality of the zoo's default recipes: every MNIST-family model trained on the bundled digits over several
seeds, with the test accuracy (min / median / max, spread) and training wall time of each, beside what the
seed notebooks documented for the same architecture.

Each run is exactly `cnnserve train MODEL --seed S` (the zoo entry's default recipe, the 1,000 held-out
test digits that every seed shares), run in this process one after another; the wall time is the run's own
`wall_time_s` (data, training, evaluation and figures; not the one-off TensorFlow import). Run it alone on
the machine: concurrent load stretches the times, never the accuracies.

Example (the README's zoo table):
    python bench/zoo_quality.py --seeds 0 1 2
    python bench/zoo_quality.py --models mnist_cnn --seeds 0 1 2 3 4
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

MNIST_FAMILY = ("mnist_mlp", "mnist_dense30", "mnist_cnn", "mnist_convnet", "lenet5", "mnist_tf_convnet")

# What the seed notebooks trained each architecture on, and the result they documented for it.
DOCUMENTED = {
    "mnist_mlp": "MNIST 60k, rmsprop, batch 128, 20 epochs; no result documented",
    "mnist_dense30": "MNIST 60k, rmsprop, batch 64, 5 epochs; no result documented",
    "mnist_cnn": "99.20% test accuracy (MNIST 60k/10k, rmsprop, batch 64, 10 epochs)",
    "mnist_convnet": "MNIST 60k, rmsprop, batch 64, 5 epochs; no result documented",
    "lenet5": "MNIST 60k, Adam, batch 128, 20 epochs; no result documented",
    "mnist_tf_convnet": "MNIST 60k, SGD lr 1e-5, batch 128; no result documented",
}


@dataclass(frozen=True)
class RunResult:
    model: str
    seed: int
    test_accuracy: float
    best_epoch: int
    epochs_completed: int
    wall_time_s: float


@dataclass(frozen=True)
class ModelSummary:
    model: str
    runs: int
    seeds: tuple[int, ...]
    accuracy_min: float
    accuracy_median: float
    accuracy_max: float
    wall_median_s: float
    wall_min_s: float
    wall_max_s: float
    recipe: str

    @property
    def spread_points(self) -> float:
        return 100 * (self.accuracy_max - self.accuracy_min)


def train_once(model: str, seed: int, workdir: Path) -> RunResult:
    import keras

    from cnnserve.training.rundir import load_run
    from cnnserve.training.train import train_model

    keras.backend.clear_session()
    run = load_run(
        train_model(model, out_dir=workdir / f"{model}-seed{seed}", seed=seed, force=True, verbose=0)
    )
    assert run.test_accuracy is not None and run.best_epoch is not None
    return RunResult(model, seed, run.test_accuracy, run.best_epoch, run.epochs_completed, run.wall_time_s)


def describe_recipe(model: str) -> str:
    from cnnserve.training.recipe import default_recipe
    from cnnserve.training.zoo import get_entry

    r = default_recipe(get_entry(model))
    parts = [f"{r.optimizer} {r.learning_rate:g}", r.schedule, f"batch {r.batch_size}", f"{r.epochs} epochs"]
    if r.patience:
        parts.append(f"patience {r.patience}")
    if r.augment:
        parts.append(f"augment {r.augmentation}")
    if r.label_smoothing:
        parts.append(f"label smoothing {r.label_smoothing:g}")
    return ", ".join(parts)


def summarise(model: str, results: list[RunResult]) -> ModelSummary:
    accuracies = [r.test_accuracy for r in results]
    walls = [r.wall_time_s for r in results]
    return ModelSummary(
        model=model,
        runs=len(results),
        seeds=tuple(r.seed for r in results),
        accuracy_min=min(accuracies),
        accuracy_median=statistics.median(accuracies),
        accuracy_max=max(accuracies),
        wall_median_s=statistics.median(walls),
        wall_min_s=min(walls),
        wall_max_s=max(walls),
        recipe=describe_recipe(model),
    )


def print_table(summaries: list[ModelSummary]) -> None:
    header = "| model | runs | test accuracy min / median / max | spread | wall time median (min–max) | "
    print(header + "default recipe | seed notebook |")
    print("|---|---|---|---|---|---|---|")
    for s in summaries:
        print(
            f"| `{s.model}` | {s.runs} | {100 * s.accuracy_min:.1f} / {100 * s.accuracy_median:.1f} / "
            f"{100 * s.accuracy_max:.1f} % | {s.spread_points:.1f} pt | {s.wall_median_s:.0f} s "
            f"({s.wall_min_s:.0f}–{s.wall_max_s:.0f}) | {s.recipe} | {DOCUMENTED[s.model]} |"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MNIST_FAMILY), choices=MNIST_FAMILY)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--workdir", type=Path, help="keep the run directories here (default: a temp dir)")
    parser.add_argument("--json", type=Path, help="also write every run and summary to this JSON file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory(prefix="zoo-quality-") as scratch:
        workdir = args.workdir or Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        import tensorflow as tf

        cores = len(os.sched_getaffinity(0))
        print(
            f"bundled digits, seeds {args.seeds}, {cores} cores, TensorFlow {tf.__version__}", file=sys.stderr
        )
        runs: list[RunResult] = []
        summaries = []
        for model in args.models:
            results = []
            for seed in args.seeds:
                result = train_once(model, seed, workdir)
                print(
                    f"{model} seed {seed}: test accuracy {100 * result.test_accuracy:.1f}%, best epoch "
                    f"{result.best_epoch} of {result.epochs_completed}, {result.wall_time_s:.1f} s",
                    file=sys.stderr,
                    flush=True,
                )
                results.append(result)
            runs.extend(results)
            summaries.append(summarise(model, results))
    print_table(summaries)
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "runs": [asdict(r) for r in runs],
                    "summaries": [asdict(s) | {"spread_points": s.spread_points} for s in summaries],
                },
                indent=2,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
