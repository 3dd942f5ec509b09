"""Logits and single-sigmoid heads: described as such in the config and served as class probabilities."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from export_runs import fast_options, make_run

from cnnserve.export.exporter import export_run
from cnnserve.protos import model_config_pb2
from cnnserve.serving.model.repository import open_model_version
from cnnserve.serving.model.runtime import ModelRuntime


def _small_model(input_shape: tuple[int, ...], units: int, activation: str | None):  # -> keras.Model
    import keras

    return keras.Sequential(
        [
            keras.Input(input_shape, name="input"),
            keras.layers.Conv2D(4, 3, activation="relu", name="conv1"),
            keras.layers.MaxPooling2D(2, name="pool1"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(units, activation=activation, name="output"),
        ]
    )


@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    ("zoo_name", "units", "activation", "kind", "labels"),
    [
        ("mnist_tf_convnet", 10, None, model_config_pb2.LOGITS, [str(i) for i in range(10)]),
        ("cats_dogs_small", 1, "sigmoid", model_config_pb2.SIGMOID, ["cat", "dog"]),
    ],
)
def test_head_is_described_and_served_as_probabilities(
    zoo_name: str,
    units: int,
    activation: str | None,
    kind: int,
    labels: list[str],
    tmp_path: Path,
    rgb_data_root: Path,
) -> None:
    from cnnserve.training.zoo import get_entry

    entry = get_entry(zoo_name)
    model = _small_model(entry.input_shape, units, activation)
    run_dir = make_run(tmp_path / "run", zoo_name, data_root=rgb_data_root, model=model)
    result = export_run(run_dir, tmp_path / "repo", fast_options())
    config = result.config
    assert config.output_kind == kind
    assert config.num_classes == len(labels)
    assert list(config.output.dims) == [units]
    assert (tmp_path / "repo" / zoo_name / "labels.txt").read_text().splitlines() == labels
    assert result.parity["output"]["max_abs_error"] <= 1e-4  # measured on probabilities

    # The serving runtime turns the head into probabilities that match Keras' own, converted by hand.
    runtime = ModelRuntime(open_model_version(tmp_path / "repo", zoo_name))
    x = np.random.default_rng(0).random((6, *entry.input_shape), dtype=np.float32)
    raw = np.asarray(model(x, training=False), dtype=np.float64)
    if kind == model_config_pb2.LOGITS:
        expected = np.exp(raw - raw.max(axis=1, keepdims=True))
        expected /= expected.sum(axis=1, keepdims=True)
    else:
        expected = np.concatenate([1.0 - raw, raw], axis=1)
    probs = runtime.classify(x)
    assert probs.shape == (6, len(labels))
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    # Grad-CAM for both heads (the sigmoid's class-0 score is the negated logit).
    assert config.gradcam.filename == "gradcam.onnx"
    assert result.parity["gradcam"]["max_abs_error_normalised_map"] <= 1e-3
