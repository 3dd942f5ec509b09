"""GetFilters reads the weights file export writes; a version exported without one says how to fix it."""

from __future__ import annotations

import shutil
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf import text_format

from cnnserve.serving.errors import LayerHasNoWeightsError, LayerNotFoundError, WeightsUnavailableError
from cnnserve.serving.grpc.client import CnnserveClient, ServerError
from cnnserve.serving.model.repository import open_model_version
from cnnserve.serving.model.weights import WeightStore

MODEL = "mnist_cnn"


def test_the_weights_file_holds_the_keras_weights_of_every_layer(
    model_repository: Path, trained_run: Path
) -> None:
    import keras

    model = open_model_version(model_repository, MODEL)
    assert model.config.weights_filename == "weights.npz"
    store = WeightStore(model)
    keras_model = keras.models.load_model(trained_run / "model.keras")
    assert store.layers == ["conv1", "conv2", "dense1", "output"]
    for layer in store.layers:
        kernel, bias = keras_model.get_layer(layer).get_weights()
        filters = store.filters(layer)
        np.testing.assert_array_equal(filters.kernel, kernel)
        np.testing.assert_array_equal(filters.bias, bias)
        assert filters.has_bias


def test_layers_without_weights_and_unknown_layers_are_told_apart(model_repository: Path) -> None:
    store = WeightStore(open_model_version(model_repository, MODEL))
    with pytest.raises(LayerHasNoWeightsError, match=r"'pool1' .* layers with weights: conv1, conv2"):
        store.filters("pool1")
    with pytest.raises(LayerNotFoundError, match="no layer 'conv9'"):
        store.filters("conv9")


def _exported_before_weights_files(repo: Path) -> None:
    """Make the copy look like a repository exported before versions had a weights file."""
    config_path = repo / MODEL / "config.pbtxt"
    config = open_model_version(repo, MODEL).config
    config.ClearField("weights_filename")
    config_path.write_text(text_format.MessageToString(config), encoding="utf-8")
    (repo / MODEL / "1" / "weights.npz").unlink()


def test_a_version_exported_before_weights_files_serves_but_asks_for_a_re_export(
    model_repository: Path, tmp_path: Path, start_server, digits
) -> None:
    repo = tmp_path / "old-repo"
    shutil.copytree(model_repository, repo)
    _exported_before_weights_files(repo)
    with pytest.raises(WeightsUnavailableError, match=r"re-export it \(`cnnserve export RUN_DIR"):
        WeightStore(open_model_version(repo, MODEL)).filters("conv1")

    server = start_server(repo)
    with CnnserveClient(server.address) as client:
        assert client.classify(digits.png[:2], MODEL).predictions  # everything else serves as before
        with pytest.raises(ServerError) as error:
            client.filters(MODEL, "conv1")
    assert error.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "was exported without a weights file" in error.value.message
    assert str(repo) not in error.value.message  # no server path reaches the client
