"""Scaled JPEG decoding with the exported model: within the bounds export recorded on real photographs of
several sizes and orientations, only where the config turns it on, and never for a repository exported
before it existed."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from cnnserve.export.photos import PHOTOS, Photo, encode
from cnnserve.serving.grpc.client import CnnserveClient
from cnnserve.serving.model.decoding import dct_scale, decode_bytes
from cnnserve.serving.model.preprocessing import PreprocessSpec, preprocess_encoded
from cnnserve.serving.model.repository import read_model_config
from cnnserve.serving.model.runtime import probabilities

MODEL = "mnist_cnn"
# Real photographs at sizes and orientations other than export's check set uses (other seeds too).
TEST_PHOTOS = (
    Photo("astronaut-3mp-portrait", "skimage", "data/astronaut.png", (1536, 2048)),
    Photo("chelsea-6mp-exif-rotated", "skimage", "data/chelsea.png", (3000, 2000), "exif-rotated"),
    Photo("coffee-640x480", "skimage", "data/coffee.png", (640, 480)),
    Photo("motorcycle-1mp-progressive", "skimage", "data/motorcycle_left.png", (1152, 864), "progressive"),
    Photo("camera-1mp-greyscale", "skimage", "data/camera.png", (1024, 1024), "greyscale"),
    Photo("rocket-2mp-cmyk", "skimage", "data/rocket.jpg", (1200, 1600), "cmyk"),
)


@pytest.fixture(scope="module")
def photos() -> dict[str, bytes]:
    return {photo.name: encode(photo, seed=100 + i) for i, photo in enumerate(TEST_PHOTOS)}


@pytest.fixture(scope="module")
def session(model_repository: Path) -> ort.InferenceSession:
    path = model_repository / MODEL / "1" / "model.onnx"
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _probabilities(session: ort.InferenceSession, spec: PreprocessSpec, images: list[bytes], kind: int):
    batch = np.stack([preprocess_encoded(data, spec) for data in images])
    return probabilities(session.run(["output"], {"input": batch})[0], kind)


def test_export_turned_scaled_decoding_on_and_recorded_why(model_repository: Path) -> None:
    config = read_model_config(model_repository / MODEL)
    parity = json.loads((model_repository / MODEL / "1" / "parity.json").read_text())
    record = parity["scaled_decoding"]
    assert record["enabled"] is True and config.preprocessing.scaled_decoding is True
    assert record["images"] == len(PHOTOS) and record["top1_agreement"] == 1.0
    assert record["max_abs_probability_difference"] <= record["bounds"]["max_abs_probability_difference"]
    assert {photo["variant"] for photo in record["photos"]} >= {"exif-rotated", "progressive", "cmyk"}
    assert parity["end_to_end"]["photo_jpeg"]["top1_agreement"] == 1.0
    assert parity["end_to_end"]["photo_jpeg"]["max_abs_input_difference"] == 0.0


def test_scaled_equals_full_within_the_recorded_bounds_on_other_photographs(
    model_repository: Path, session: ort.InferenceSession, photos: dict[str, bytes]
) -> None:
    config = read_model_config(model_repository / MODEL)
    bounds = json.loads((model_repository / MODEL / "1" / "parity.json").read_text())["scaled_decoding"]
    spec = PreprocessSpec.from_model_config(config)
    assert spec.scaled_decoding
    images = list(photos.values())
    scales = [dct_scale(*_size(data), spec.min_decoded_size) for data in images]
    assert min(scales) > 1  # every photo here is decoded at a DCT scale
    full = _probabilities(session, replace(spec, scaled_decoding=False), images, config.output_kind)
    scaled = _probabilities(session, spec, images, config.output_kind)
    np.testing.assert_array_equal(full.argmax(axis=1), scaled.argmax(axis=1))
    assert np.abs(full - scaled).max() <= bounds["bounds"]["max_abs_probability_difference"]


def _size(data: bytes) -> tuple[int, int]:
    pixels = decode_bytes(data).pixels
    height, width = pixels.shape[:2] if isinstance(pixels, np.ndarray) else pixels.size[::-1]
    return width, height


def test_an_exif_rotated_photo_is_read_as_stored_on_both_paths(photos: dict[str, bytes]) -> None:
    """Training (Keras' load_img) does not apply EXIF orientation, so neither path does: the scaled
    tensor is the full one's, not a turned one."""
    data = photos["chelsea-6mp-exif-rotated"]
    assert _size(data) == (2000, 3000)  # stored turned, with orientation tag 6
    for size in (28, 150):
        full_spec = _rgb_spec(size)
        full = preprocess_encoded(data, full_spec)
        scaled = preprocess_encoded(data, replace(full_spec, scaled_decoding=True))
        turned = np.rot90(full, k=-1)
        assert np.abs(scaled - full).mean() < np.abs(scaled - turned).mean() / 10


def _rgb_spec(size: int) -> PreprocessSpec:
    from cnnserve.protos import model_config_pb2

    pre = model_config_pb2.Preprocessing(
        color_mode=model_config_pb2.RGB,
        height=size,
        width=size,
        resize_filter=model_config_pb2.BILINEAR,
        scale=1 / 255,
    )
    return PreprocessSpec.from_config(pre, (size, size, 3))


def test_a_repository_exported_before_scaled_decoding_still_serves_full_decoding(
    model_repository: Path, repo_copy: Path, start_server, session: ort.InferenceSession, photos
) -> None:
    """Its config.pbtxt has no scaled_decoding: the server decodes in full, bit for bit the full path's
    tensors; the current repository's server decodes at a DCT scale."""
    config_path = repo_copy / MODEL / "config.pbtxt"
    text = config_path.read_text()
    assert "scaled_decoding: true" in text
    config_path.write_text(re.sub(r"\n\s*scaled_decoding: true", "", text))
    old_config = read_model_config(repo_copy / MODEL)
    spec = PreprocessSpec.from_model_config(old_config)
    assert spec.scaled_decoding is False
    images = [photos["astronaut-3mp-portrait"], photos["motorcycle-1mp-progressive"]]
    kind = old_config.output_kind
    full = _probabilities(session, spec, images, kind)
    scaled = _probabilities(session, replace(spec, scaled_decoding=True), images, kind)
    assert np.abs(full - scaled).max() > 1e-5  # the two paths tell apart on these photos
    for repo, expected in ((repo_copy, full), (model_repository, scaled)):
        server = start_server(repo)
        with CnnserveClient(server.address) as client:
            result = client.classify(images, MODEL, top_k=10)
        for row, predictions in zip(expected, result.predictions, strict=True):
            served = np.zeros_like(row)
            for prediction in predictions:
                served[prediction.index] = prediction.score
            np.testing.assert_allclose(served, row, rtol=0, atol=2e-6)
