"""Quality of the zoo's default recipes: every MNIST-family model trained on the bundled digits over several
seeds, with the test accuracy (min / median / max, spread) and training wall time of each, beside what the
seed notebooks documented for the same architecture.

Each run is exactly `cnnserve train MODEL --seed S` (the zoo entry's default recipe, the 1,000 held-out
test digits that every seed shares), one process per run, one run after another; the wall time is the run's
own `wall_time_s` from run.json (data, training, evaluation and figures; not the TensorFlow import). Run it
alone on the machine: concurrent load stretches the times, never the accuracies.

`--reference CNNSERVE` also trains the `--reference-models` with another installation's `cnnserve` (an
earlier release, say), seed for seed, each reference run right after the matching run of this one, so both
recipes see the same machine conditions; it prints the accuracy and the training-time ratio side by side.

Example (the README's zoo table):
    python bench/zoo_quality.py --seeds 0 1 2
    python bench/zoo_quality.py --models mnist_cnn --seeds 0 1 2 3 4 --reference ../old/.venv/bin/cnnserve
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import logging
import os
import statistics
import subprocess
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


THIS_CNNSERVE = (sys.executable, "-m", "cnnserve.cli")


def tensorflow_version() -> str:
    """The installed TensorFlow's version, read from its package metadata (importing it costs seconds)."""
    for distribution in ("tensorflow", "tensorflow-cpu", "tensorflow-intel"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            return importlib.metadata.version(distribution)
    return "unknown"


def train_once(cnnserve: tuple[str, ...], model: str, seed: int, run_dir: Path) -> RunResult:
    """`cnnserve train MODEL --seed S` in its own process; the figures are the ones its run.json records."""
    command = [*cnnserve, "train", model, "--seed", str(seed), "--out", str(run_dir), "--force"]
    finished = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if finished.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{finished.stderr[-2000:]}")
    run = json.loads((run_dir / "run.json").read_text())
    return RunResult(
        model,
        seed,
        float(run["test_accuracy"]),
        int(run["best_epoch"]),
        int(run["epochs_completed"]),
        float(run["wall_time_s"]),
    )


def report(label: str, result: RunResult) -> None:
    print(
        f"{label} {result.model} seed {result.seed}: test accuracy {100 * result.test_accuracy:.1f}%, best "
        f"epoch {result.best_epoch} of {result.epochs_completed}, {result.wall_time_s:.1f} s",
        file=sys.stderr,
        flush=True,
    )


def print_comparison(model: str, ours: list[RunResult], theirs: list[RunResult], reference: str) -> None:
    """This recipe beside the reference installation's, seed for seed, and the ratio of training times."""
    print(f"\n`{model}`: this recipe vs `{reference}`, seed for seed\n")
    print("| seed | test accuracy | reference | wall time | reference | time ratio |")
    print("|---|---|---|---|---|---|")
    for a, b in zip(ours, theirs, strict=True):
        print(
            f"| {a.seed} | {100 * a.test_accuracy:.1f} % | {100 * b.test_accuracy:.1f} % | "
            f"{a.wall_time_s:.0f} s | {b.wall_time_s:.0f} s | {a.wall_time_s / b.wall_time_s:.2f}× |"
        )
    ratio = statistics.median(a.wall_time_s for a in ours) / statistics.median(b.wall_time_s for b in theirs)
    print(
        f"| median | {100 * statistics.median(a.test_accuracy for a in ours):.1f} % | "
        f"{100 * statistics.median(b.test_accuracy for b in theirs):.1f} % | "
        f"{statistics.median(a.wall_time_s for a in ours):.0f} s | "
        f"{statistics.median(b.wall_time_s for b in theirs):.0f} s | {ratio:.2f}× |"
    )


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
    parser.add_argument("--reference", help="another installation's cnnserve executable to compare with")
    parser.add_argument(
        "--reference-models",
        nargs="+",
        default=["mnist_cnn"],
        choices=MNIST_FAMILY,
        help="the models trained with --reference as well (default: mnist_cnn)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory(prefix="zoo-quality-") as scratch:
        workdir = args.workdir or Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        cores = len(os.sched_getaffinity(0))
        tensorflow = tensorflow_version()
        print(f"bundled digits, seeds {args.seeds}, {cores} cores, TensorFlow {tensorflow}", file=sys.stderr)
        runs: list[RunResult] = []
        reference_runs: list[RunResult] = []
        summaries = []
        comparisons = []
        for model in args.models:
            results, theirs = [], []
            for seed in args.seeds:
                result = train_once(THIS_CNNSERVE, model, seed, workdir / f"{model}-seed{seed}")
                report("this", result)
                results.append(result)
                if args.reference and model in args.reference_models:
                    other = train_once((args.reference,), model, seed, workdir / f"{model}-seed{seed}-ref")
                    report("reference", other)
                    theirs.append(other)
            runs.extend(results)
            reference_runs.extend(theirs)
            summaries.append(summarise(model, results))
            if theirs:
                comparisons.append((model, results, theirs))
    print_table(summaries)
    for model, ours, theirs in comparisons:
        print_comparison(model, ours, theirs, args.reference)
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "runs": [asdict(r) for r in runs],
                    "reference": args.reference,
                    "reference_runs": [asdict(r) for r in reference_runs],
                    "summaries": [asdict(s) | {"spread_points": s.spread_points} for s in summaries],
                },
                indent=2,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
