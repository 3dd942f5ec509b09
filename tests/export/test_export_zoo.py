"""Every zoo architecture exports with parity on its final output and every activation layer.

Weights are untrained (biases made non-zero); samples are real (bundled MNIST digits, or real PNG files
for the RGB models). Each export also proves the layer-weights map and the Grad-CAM graph.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from export_runs import fast_options, make_run
from google.protobuf import text_format
from onnx import numpy_helper

from cnnserve.export.exporter import export_run
from cnnserve.protos import model_config_pb2
from cnnserve.training.zoo import ZOO

ACTIVATION_CLASSES = {"Conv2D", "MaxPooling2D", "Dense", "Flatten", "Dropout"}


@pytest.fixture(scope="module")
def zoo_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("zoo-repo")


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("zoo_name", list(ZOO))
def test_zoo_model_exports_with_parity(
    zoo_name: str, zoo_repo: Path, rgb_data_root: Path, tmp_path: Path
) -> None:
    import keras

    entry = ZOO[zoo_name]
    run_dir = make_run(tmp_path / "run", zoo_name, data_root=rgb_data_root)
    # The 150×150 model is the slow one: a smaller max batch keeps its full-batch edge case cheap.
    options = fast_options(max_batch_size=4 if zoo_name == "cats_dogs_cnn" else 16)
    result = export_run(run_dir, zoo_repo, options)
    parity = result.parity
    assert result.model_name == zoo_name and result.version == 1
    assert result.version_dir == zoo_repo / zoo_name / "1"

    # Enforced parity, on held-out samples and on every edge case.
    assert parity["passed"] is True
    for case in ("held_out", "all_black", "all_white", "batch_of_1", "batch_of_max"):
        figures = parity["cases"][case]["output"]
        assert figures["max_abs_error"] <= 1e-4, (case, figures)
        assert figures["top1_agreement"] == 1.0, (case, figures)
    assert parity["cases"]["batch_of_max"]["samples"] == options.max_batch_size
    assert parity["cases"]["batch_of_1"]["samples"] == 1

    # Every Conv/Pool/Dense/Flatten/Dropout layer is an activation output, within the bound.
    model = keras.models.load_model(run_dir / "model.keras", compile=False)
    expected = [layer.name for layer in model.layers if type(layer).__name__ in ACTIVATION_CLASSES]
    config = model_config_pb2.ModelConfig()
    text_format.Parse((zoo_repo / zoo_name / "config.pbtxt").read_text(), config)
    assert [layer.name for layer in config.activation_layers] == expected
    assert sorted(parity["activations"]) == sorted(expected)
    for name, figures in parity["activations"].items():
        assert figures["max_rel_error"] <= 1e-4, (name, figures)

    # The config describes the head, the classes and the input.
    kinds = {"softmax": model_config_pb2.SOFTMAX, "logits": model_config_pb2.LOGITS}
    kinds["sigmoid"] = model_config_pb2.SIGMOID
    assert config.output_kind == kinds[entry.output_kind]
    assert config.num_classes == entry.num_classes
    assert list(config.input.dims) == list(entry.input_shape)
    labels = (zoo_repo / zoo_name / "labels.txt").read_text().splitlines()
    assert labels == list(entry.labels)

    # Photo-sized JPEGs of real photographs: full decoding is the training path exactly; scaled decoding
    # is on in the config exactly when its figures held within the bounds.
    photos = parity["end_to_end"]["photo_jpeg"]
    assert photos["images"] == options.photo_samples and photos["max_abs_input_difference"] == 0.0
    scaled = parity["scaled_decoding"]
    assert scaled["images"] == options.photo_samples
    assert config.preprocessing.scaled_decoding == scaled["enabled"]
    assert scaled["enabled"] == (
        scaled["top1_agreement"] == 1.0 and scaled["max_abs_probability_difference"] <= 1e-2
    ), scaled

    # The activations graph holds one output per activation layer, with our names and a dynamic batch.
    activations_file = result.version_dir / (config.activations_filename or "model.onnx")
    graph = onnx.load(str(activations_file)).graph
    assert [i.name for i in graph.input] == ["input"]
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_value == 0  # symbolic, not fixed
    outputs = {o.name for o in graph.output}
    assert {layer.output_name for layer in config.activation_layers} <= outputs
    assert "output" in outputs

    # Independently of export's own check: ONNX Runtime vs Keras on a batch of real held-out samples.
    from cnnserve.training.datasets import load_samples
    from cnnserve.training.rundir import load_run

    x, _ = load_samples(load_run(run_dir), "test", 5, seed=3)
    session = ort.InferenceSession(str(result.version_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx_out = session.run(["output"], {"input": x.astype(np.float32)})[0]
    np.testing.assert_allclose(onnx_out, np.asarray(model(x, training=False)), atol=1e-5)

    # Issue 8: every Conv and Dense layer's weights are readable from model.onnx without TensorFlow.
    initializers = {i.name: i for i in onnx.load(str(result.version_dir / "model.onnx")).graph.initializer}
    weight_layers = [layer for layer in model.layers if type(layer).__name__ in ("Conv2D", "Dense")]
    assert [w.layer for w in config.layer_weights] == [layer.name for layer in weight_layers]
    for spec, layer in zip(config.layer_weights, weight_layers, strict=True):
        kernel, bias = layer.get_weights()
        onnx_kernel = np.transpose(
            numpy_helper.to_array(initializers[spec.kernel_initializer]), list(spec.kernel_permutation)
        )
        np.testing.assert_array_equal(onnx_kernel, kernel)
        assert list(spec.kernel_shape) == list(kernel.shape)
        np.testing.assert_array_equal(numpy_helper.to_array(initializers[spec.bias_initializer]), bias)

    # Issue 8: the Grad-CAM gradient graph, or the reason there is none.
    has_conv = any(type(layer).__name__ == "Conv2D" for layer in model.layers)
    if has_conv:
        assert config.gradcam.filename == "gradcam.onnx", config.gradcam.unavailable_reason
        assert (result.version_dir / "gradcam.onnx").is_file()
        assert parity["gradcam"]["max_abs_error_normalised_map"] <= 1e-3
        assert parity["gradcam"]["evaluations"] == 2 * options.gradcam_samples
    else:
        assert not config.gradcam.filename
        assert "no convolution" in config.gradcam.unavailable_reason
