"""The training options on real, short runs: fine-tuning, resuming a killed run, early stopping, schedules,
and every option recorded in run.json."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cnnserve.training.datasets import load_samples
from cnnserve.training.rundir import load_run, model_path
from cnnserve.training.selection import kept_epoch
from cnnserve.training.train import train_model


def smoothed_targets(smoothing: float, classes: int) -> np.ndarray:
    """One row of smoothed one-hot targets, as Keras' label smoothing makes them (zeros left out)."""
    row = np.full(classes, smoothing / classes)
    row[0] += 1.0 - smoothing
    return row[row > 0]


def test_init_from_starts_from_the_other_runs_weights(
    trained_run: Path, small_digits: Path, tmp_path: Path
) -> None:
    fresh = load_run(trained_run)  # the shared run: mnist_cnn trained from scratch on the bundled digits
    tuned_dir = train_model(
        "mnist_cnn",
        data=small_digits,
        init_from=trained_run,
        out_dir=tmp_path / "tuned",
        epochs=1,
        augment=False,
        verbose=0,
    )
    tuned = load_run(tuned_dir)
    assert tuned.init_from == str(trained_run.resolve())
    # A fresh start's first epoch begins at chance (loss ~2.3); a warm start begins where the other run ended.
    # Label smoothing puts a floor under the loss (the smoothed targets' entropy, 0.50 at 0.1 over ten
    # classes): compare what lies above it.
    targets = smoothed_targets(fresh.recipe.label_smoothing, 10)
    floor = float(-(targets * np.log(targets)).sum())
    assert tuned.history["loss"][0] - floor < 0.5 * (fresh.history["loss"][0] - floor)
    assert tuned.history["val_accuracy"][0] >= fresh.history["val_accuracy"][-1] - 0.02
    assert json.loads((tuned_dir / "run.json").read_text())["init_from"] == str(trained_run.resolve())


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_resume_after_the_process_was_killed(small_digits: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "killed"
    state_file = run_dir / "checkpoint" / "state.json"
    command = [sys.executable, "-m", "cnnserve.cli", "train", "mnist_cnn", "--data", str(small_digits)]
    command += ["--epochs", "5", "--out", str(run_dir)]
    process = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    try:
        deadline = time.monotonic() + 180
        while not (state_file.is_file() and json.loads(state_file.read_text())["epochs_done"] >= 1):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "no epoch was committed"
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    before = json.loads(state_file.read_text())
    done = before["epochs_done"]
    assert 1 <= done < 5, "the run finished before it could be killed"
    assert not (run_dir / "run.json").exists()
    # The committed epoch's model file exists; model.keras may still be missing when the kill fell between the
    # commit and its copy, which --resume restores first.
    assert (run_dir / "checkpoint" / before["model_file"]).is_file()

    train_model("mnist_cnn", out_dir=run_dir, resume=True, verbose=0)

    run = load_run(run_dir)
    assert run.status == "completed" and run.epochs_completed == 5 and run.resumed_at_epochs == (done,)
    for name in ("model.keras", "run.json", "history.png", "misclassified.png", "confusion_matrix.png"):
        assert (run_dir / name).is_file(), name
    assert not (run_dir / "checkpoint").exists()
    assert all(len(values) == 5 for values in run.history.values())
    # The epochs before the kill are kept as they were; the rest continue the same schedule.
    for key, values in before["history"].items():
        assert run.history[key][:done] == values
    assert run.test_accuracy is not None and run.test_accuracy > 0.5  # five short epochs on 600 digits
    # The same run uninterrupted: the same order, augmentation and optimizer state, so the same result up
    # to TensorFlow's own non-determinism.
    whole_dir = train_model("mnist_cnn", data=small_digits, out_dir=tmp_path / "whole", epochs=5, verbose=0)
    whole = load_run(whole_dir)
    np.testing.assert_allclose(run.history["val_loss"], whole.history["val_loss"], rtol=0.05)
    assert abs(run.test_accuracy - (whole.test_accuracy or 0)) <= 0.03


def test_early_stopping_stops_and_keeps_the_best_epoch(noise_digits: Path, tmp_path: Path) -> None:
    run_dir = train_model(
        "mnist_dense30",
        data=noise_digits,
        out_dir=tmp_path / "noise",
        epochs=40,
        patience=3,
        schedule="plateau",
        learning_rate=0.003,
        validation_split=0.25,
        verbose=0,
    )
    run = load_run(run_dir)
    assert run.stopped_early and run.epochs_completed < 40
    assert run.best_epoch is not None and run.epochs_completed == run.best_epoch + 3
    accuracy, loss = run.history["val_accuracy"], run.history["val_loss"]
    assert run.best_epoch == kept_epoch(accuracy, loss, run.split_sizes["validation"])
    # model.keras holds the best epoch's weights, not the last epoch's.
    import keras

    x, y = load_samples(run, "validation", 1000)
    scores = keras.models.load_model(model_path(run_dir)).evaluate(
        x, keras.utils.to_categorical(y, 10), verbose=0, return_dict=True
    )
    assert scores["accuracy"] == pytest.approx(accuracy[run.best_epoch - 1], abs=1e-6)
    assert scores["loss"] == pytest.approx(loss[run.best_epoch - 1], rel=1e-4)
    # The plateau schedule halved the rate while the validation loss kept rising.
    rates = run.history["learning_rate"]
    assert rates[0] == pytest.approx(0.003) and rates[-1] == pytest.approx(
        rates[0] / 2 ** round(np.log2(rates[0] / rates[-1]))
    )
    assert rates[-1] <= 0.5 * rates[0] * (1 + 1e-6)


def test_every_option_lands_in_run_json(small_digits: Path, tmp_path: Path) -> None:
    run_dir = train_model(
        "lenet5",
        data=small_digits,
        out_dir=tmp_path / "options",
        epochs=3,
        batch_size=50,
        seed=5,
        learning_rate=0.004,
        schedule="cosine",
        patience=2,
        augment=False,
        validation_split=0.25,
        verbose=0,
    )
    data = json.loads((run_dir / "run.json").read_text())
    expected = {
        "epochs": 3,
        "batch_size": 50,
        "seed": 5,
        "learning_rate": 0.004,
        "schedule": "cosine",
        "patience": 2,
        "augment": False,
        "augmentation": "none",
        "validation_split": 0.25,
        "init_from": None,
        "resumed_at_epochs": [],
    }
    assert {key: data[key] for key in expected} == expected
    assert data["dataset"]["validation_split"] == 0.25
    sizes = data["split_sizes"]
    assert sizes["train"] + sizes["validation"] == 600 and abs(sizes["validation"] - 150) <= 5
    assert sizes["test"] == 200
    rates = data["history"]["learning_rate"]  # cosine: down every epoch, towards zero at the end
    assert rates[0] < 0.004 and rates == sorted(rates, reverse=True) and rates[-1] < 1e-6
