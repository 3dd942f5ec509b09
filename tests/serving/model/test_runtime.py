"""ModelRuntime and ModelVersion as the batch job's worker processes use them."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from cnnserve.serving.model.repository import open_model_version
from cnnserve.serving.model.runtime import ModelRuntime, SessionOptions

MODEL = "mnist_cnn"


def test_model_version_crosses_a_process_boundary(model_repository: Path) -> None:
    model = open_model_version(model_repository, MODEL)
    copy = pickle.loads(pickle.dumps(model))
    assert copy == model
    assert copy.config.SerializeToString() == model.config.SerializeToString()
    assert copy.model_file == model.model_file


def test_runtime_without_activations_classifies_the_same(model_repository: Path) -> None:
    model = open_model_version(model_repository, MODEL)
    options = SessionOptions(device="cpu", intra_op_threads=1)
    full = ModelRuntime(model, options)
    lean = ModelRuntime(model, options, with_activations=False)
    batch = np.random.default_rng(0).random((8, *full.input_dims), dtype=np.float32)
    np.testing.assert_array_equal(lean.classify(batch), full.classify(batch))
    assert lean.warm_up() > 0
    layer = next(iter(full.activation_outputs))
    assert full.activations(batch, [layer])[layer].shape[0] == 8
    with pytest.raises(RuntimeError, match="without activations"):
        lean.activations(batch, [layer])
