"""Small real datasets for the short training runs of the training tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session")
def small_digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Keras-style .npz of 600 training and 200 test digits taken from the bundled MNIST digits."""
    from cnnserve.training.datasets import load_bundled_digits

    digits = load_bundled_digits(seed=0)
    train, test = digits.splits["train"], digits.splits["test"]
    path = tmp_path_factory.mktemp("small_digits") / "digits.npz"
    np.savez(
        path,
        x_train=train.images[:600],
        y_train=train.labels[:600],
        x_test=test.images[:200],
        y_test=test.labels[:200],
    )
    return path


@pytest.fixture(scope="session")
def noise_digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random images, random labels: validation accuracy cannot improve for long, validation loss rises."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("noise_digits") / "noise.npz"
    np.savez(
        path,
        x_train=rng.integers(0, 256, (400, 28, 28), dtype=np.uint8),
        y_train=np.arange(400) % 10,
        x_test=rng.integers(0, 256, (100, 28, 28), dtype=np.uint8),
        y_test=np.arange(100) % 10,
    )
    return path
