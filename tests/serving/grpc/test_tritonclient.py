"""Triton's own clients (tritonclient.grpc and tritonclient.http, in their own environment) against cnnserve.

The clients talk to a real server over the wire; their answers must equal cnnserve.v1 Classify's on the
same images, for FP32 tensors and for encoded images alike.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cnnserve.serving.grpc.client import CnnserveClient
from cnnserve.serving.model.preprocessing import PreprocessSpec, preprocess_encoded
from cnnserve.serving.model.repository import open_model_version

CHECKS = Path(__file__).with_name("tritonclient_checks.py")
MODEL = "mnist_cnn"
IMAGES = 6


@pytest.fixture(scope="module")
def seen(
    served_http: Any, digits: Any, tritonclient_python: Path, model_repository: Path, tmp_path_factory: Any
) -> dict[str, Any]:
    """What both Triton clients saw, and the expected answers from cnnserve.v1 Classify."""
    spec = PreprocessSpec.from_model_config(open_model_version(model_repository, MODEL).config)
    tensors = np.stack([preprocess_encoded(png, spec) for png in digits.png[:IMAGES]])
    folder = tmp_path_factory.mktemp("tritonclient")
    np.save(folder / "tensors.npy", tensors)
    http = served_http.http_url.removeprefix("http://")
    command = [
        str(tritonclient_python),
        str(CHECKS),
        served_http.address,
        http,
        MODEL,
        str(folder / "tensors.npy"),
    ]
    command += [str(path) for path in digits.png_paths[:IMAGES]]
    result = subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    with CnnserveClient(served_http.address) as client:
        expected = client.classify(digits.png[:IMAGES], MODEL, top_k=3)
    return {"clients": json.loads(result.stdout), "expected": expected, "labels": digits.labels[:IMAGES]}


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_health_metadata_and_config(seen: dict[str, Any], protocol: str) -> None:
    out = seen["clients"][protocol]
    assert out["live"] and out["ready"] and out["model_ready"] and out["version_ready"]
    metadata = out["metadata"]
    assert metadata["name"] == MODEL and metadata["versions"] == ["1"]
    assert [(i["name"], i["datatype"], [int(d) for d in i["shape"]]) for i in metadata["inputs"]] == [
        ("input", "FP32", [-1, 28, 28, 1])
    ]
    assert [(o["name"], o["datatype"]) for o in metadata["outputs"]] == [("probabilities", "FP32")]
    config = out["config"]
    assert (config["name"], config["platform"], int(config["max_batch_size"])) == (
        MODEL,
        "onnxruntime_onnx",
        64,
    )
    assert [int(d) for d in config["input"][0]["dims"]] == [28, 28, 1]
    assert config["output"][0]["name"] == "probabilities"


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_inference_equals_classify(seen: dict[str, Any], protocol: str) -> None:
    out = seen["clients"][protocol]
    expected = seen["expected"].predictions
    for probabilities in (
        out["fp32_probabilities"],
        out["bytes_probabilities"],
        out["with_dense1_probabilities"],
    ):
        probs = np.asarray(probabilities)
        assert probs.shape == (IMAGES, 10)
        assert probs.argmax(axis=1).tolist() == [p[0].index for p in expected]
        for row, predictions in zip(probs, expected, strict=True):
            assert [row[p.index] for p in predictions] == pytest.approx(
                [p.score for p in predictions], abs=1e-5
            )
    assert out["fp32_id"] == "req-42" and out["fp32_version"] == "1"
    assert out["dense1_shape"] == [IMAGES, 64]
    # The classification extension: "score:index:label", best first, the top 3 of Classify.
    for row, predictions in zip(out["classification"], expected, strict=True):
        parsed = [entry.split(":") for entry in row]
        assert [(int(i), label) for _, i, label in parsed] == [(p.index, p.label) for p in predictions]
        assert [float(s) for s, _, _ in parsed] == pytest.approx([p.score for p in predictions], abs=1e-5)
    assert out["inference_count"] >= 4 * IMAGES


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_errors_and_model_control(seen: dict[str, Any], protocol: str) -> None:
    out = seen["clients"][protocol]
    codes = {
        "grpc": ("StatusCode.NOT_FOUND", "StatusCode.INVALID_ARGUMENT", "StatusCode.UNAVAILABLE"),
        "http": ("404", "400", "503"),
    }[protocol]
    not_found, invalid, unavailable = codes
    assert out["unknown_model"].startswith(not_found) and "no_such_model" in out["unknown_model"]
    assert out["unknown_version"].startswith(not_found) and "version 9" in out["unknown_version"]
    assert out["wrong_shape"].startswith(invalid) and "[1, 28, 28]" in out["wrong_shape"]
    assert out["bad_image"].startswith(invalid) and "image 1" in out["bad_image"]
    assert "0x" not in out["bad_image"]
    index = out["index"]
    assert [(m["name"], m.get("version"), m.get("state")) for m in index] == [(MODEL, "1", "READY")]
    assert out["ready_after_unload"] is False
    assert out["infer_after_unload"].startswith(unavailable) and "unloaded" in out["infer_after_unload"]
    assert out["ready_after_load"] is True and out["infer_after_load"] == IMAGES
