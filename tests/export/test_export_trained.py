"""The trained `mnist_cnn` end to end: repository contents, real image files, and the fp16/int8 variants."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from export_runs import fast_options
from google.protobuf import text_format
from PIL import Image

from cnnserve.cli import main
from cnnserve.export.errors import VariantRejectedError
from cnnserve.export.exporter import export_run
from cnnserve.export.verify import Thresholds
from cnnserve.protos import model_config_pb2


def _copy_run(run_dir: Path, target: Path) -> Path:
    """A private copy of the shared run, so failure reports written next to it stay out of the fixture."""
    target.mkdir(parents=True)
    for name in ("model.keras", "run.json"):
        shutil.copy2(run_dir / name, target / name)
    return target


def test_repository_holds_a_verified_version(model_repository: Path) -> None:
    model_dir = model_repository / "mnist_cnn"
    config = model_config_pb2.ModelConfig()
    text_format.Parse((model_dir / "config.pbtxt").read_text(), config)
    assert config.name == "mnist_cnn" and config.platform == "onnxruntime_onnx"
    assert config.input.name == "input" and list(config.input.dims) == [28, 28, 1]
    assert config.output.name == "output" and config.output_kind == model_config_pb2.SOFTMAX
    assert config.num_classes == 10 and config.max_batch_size == 64
    assert config.preprocessing.color_mode == model_config_pb2.GRAYSCALE
    assert (config.preprocessing.height, config.preprocessing.width) == (28, 28)
    assert config.preprocessing.scale == pytest.approx(1 / 255)
    assert config.dynamic_batching.max_queue_delay_microseconds > 0
    assert config.dynamic_batching.max_queue_size >= config.max_batch_size
    assert config.version_policy.latest.num_versions == 1
    assert list(config.execution.providers) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert config.execution.model_filename == "model.onnx"
    assert [a.name for a in config.activation_layers] == [
        "conv1",
        "pool1",
        "conv2",
        "pool2",
        "flatten",
        "dense1",
        "output",
    ]
    assert (model_dir / "labels.txt").read_text().splitlines() == [str(i) for i in range(10)]

    parity = json.loads((model_dir / "1" / "parity.json").read_text())
    assert parity["passed"] is True
    assert parity["held_out"]["samples"] == 256
    assert parity["output"]["max_abs_error"] <= 1e-4 and parity["output"]["top1_agreement"] == 1.0
    # Serving and training preprocess alike: the tensors are identical, not merely close.
    for check in ("png", "jpeg"):
        end_to_end = parity["end_to_end"][check]
        assert end_to_end["images"] == 8 and end_to_end["passed"] is True
        assert end_to_end["top1_agreement"] == 1.0 and end_to_end["disagreeing"] == []
        assert end_to_end["max_abs_input_difference"] == 0.0 and end_to_end["worst_input_file"] is None
        assert end_to_end["max_abs_probability_difference"] <= 1e-4
        assert end_to_end["bound"] == parity["thresholds"]["end_to_end"][check]
        assert end_to_end["bound"]["max_input_difference"] == 0.0
    assert parity["end_to_end"]["image_size"] == [43, 43]
    overhead = parity["activation_outputs"]
    assert overhead["separate_activations_graph"] == (overhead["overhead_pct"] > overhead["limit_pct"])
    assert bool(config.activations_filename) == overhead["separate_activations_graph"]
    assert parity["gradcam"]["available"] and config.gradcam.layer == "conv2"
    # Nothing but integer versions (no leftover temporary folders) in the model folder.
    assert sorted(p.name for p in model_dir.iterdir()) == ["1", "config.pbtxt", "labels.txt"]


def test_image_files_through_serving_preprocessing_match_keras(
    trained_run: Path, model_repository: Path, tmp_path: Path
) -> None:
    """Real PNG and JPEG files, smaller and larger than 28×28: ONNX via serving == Keras via training."""
    import keras

    from cnnserve.serving.model.preprocessing import PreprocessSpec, preprocess_encoded
    from cnnserve.serving.model.repository import read_model_config
    from cnnserve.training.datasets import load_image_for_training, load_raw_samples
    from cnnserve.training.rundir import load_run

    run = load_run(trained_run)
    raw, labels = load_raw_samples(run, "test", 24, seed=5)
    config = read_model_config(model_repository / "mnist_cnn")
    spec = PreprocessSpec.from_config(config.preprocessing, config.input.dims)
    session = ort.InferenceSession(
        str(model_repository / "mnist_cnn" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    model = keras.models.load_model(trained_run / "model.keras", compile=False)
    for size, fmt in (((45, 45), "PNG"), ((20, 20), "JPEG")):
        served, trained = [], []
        for index, image in enumerate(raw):
            buffer = io.BytesIO()
            Image.fromarray(image, "L").resize(size, Image.Resampling.BICUBIC).save(buffer, format=fmt)
            path = tmp_path / f"{index}.{fmt.lower()}"
            path.write_bytes(buffer.getvalue())
            served.append(preprocess_encoded(path.read_bytes(), spec))
            trained.append(load_image_for_training(path, run))
        onnx_top1 = session.run(["output"], {"input": np.stack(served)})[0].argmax(axis=1)
        keras_top1 = np.asarray(model(np.stack(trained), training=False)).argmax(axis=1)
        np.testing.assert_array_equal(onnx_top1, keras_top1)
        if size == (45, 45):  # upscaled digits are still digits to a trained model
            assert np.mean(onnx_top1 == labels) >= 0.75


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_fp16_and_int8_variants_within_the_accuracy_bound(trained_run: Path, tmp_path: Path) -> None:
    run_dir = _copy_run(trained_run, tmp_path / "run")
    options = fast_options(
        samples=64,
        fp16=True,
        int8=True,
        accuracy_samples=1000,
        calibration_samples=128,
        max_batch_size=64,
        gradcam=False,
    )
    result = export_run(run_dir, tmp_path / "repo", options)
    variants = result.parity["variants"]
    for key, filename in (("fp16", "model.fp16.onnx"), ("int8", "model.int8.onnx")):
        figures = variants[key]
        path = result.version_dir / filename
        assert path.is_file() and figures["file"] == filename
        assert figures["test_samples"] == 1000
        assert figures["accuracy_change_points"] >= -1.0, figures
        assert figures["top1_agreement_vs_fp32"] >= 0.95
        assert figures["size_bytes"] == path.stat().st_size
        assert figures["cpu_images_per_s"] > 0 and figures["cpu_images_per_s_fp32"] > 0
    assert variants["fp16"]["size_ratio_vs_fp32"] < 0.6
    assert variants["int8"]["size_ratio_vs_fp32"] < 0.35
    # The int8 graph really is quantized (QDQ) and runs with float32 input and output.
    import onnx

    ops = {node.op_type for node in onnx.load(str(result.version_dir / "model.int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert result.config.execution.model_filename == "model.onnx"


@pytest.mark.timeout(240)
def test_a_variant_beyond_the_bound_is_refused(trained_run: Path, tmp_path: Path) -> None:
    """With a bound no variant can meet (it must gain 100 points), export refuses and writes nothing."""
    run_dir = _copy_run(trained_run, tmp_path / "run")
    options = fast_options(fp16=True, gradcam=False, thresholds=Thresholds(max_accuracy_drop=-100.0))
    with pytest.raises(VariantRejectedError, match="fp16") as raised:
        export_run(run_dir, tmp_path / "repo", options)
    assert not (tmp_path / "repo" / "mnist_cnn").exists()
    report = json.loads(Path(raised.value.report_path).read_text())
    assert Path(raised.value.report_path).parent == run_dir
    assert report["passed"] is False and "fp16" in report["variants"]
    assert any("fp16" in failure for failure in report["failures"])


def test_inspect_prints_the_repository(model_repository: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(model_repository)]) == 0
    text = capsys.readouterr().out
    for expected in (
        "mnist_cnn",
        "version 1 (live)",
        "conv1 (conv 28×28×32)",
        "top-1 agreement 100.00%",
        "model.onnx",
        "grad-cam",
        "SOFTMAX",
    ):
        assert expected in text, expected
    assert main(["inspect", str(model_repository / "mnist_cnn"), "--json"]) == 0
    described = json.loads(capsys.readouterr().out)
    (model,) = described["models"]
    assert model["name"] == "mnist_cnn" and model["input"]["dims"] == [28, 28, 1]
    (version,) = model["versions"]
    assert version["files"]["model.onnx"] > 100_000
    assert version["parity"]["top1_agreement"] == 1.0
    assert main(["inspect", str(model_repository / "nope")]) != 0
    assert "error:" in capsys.readouterr().err
