"""The numpy core of filters and explanations, on inputs whose right answer is known exactly.

No model files here: occlusion is driven by a hand-written "model" whose score depends on one known
square of the image, so a heatmap that is wrong anywhere fails; the model-backed tests are in
test_insight_models.py.
"""

from __future__ import annotations

import asyncio
import io
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnserve.protos import model_config_pb2
from cnnserve.serving.errors import GradCamUnavailableError, InvalidRequestError
from cnnserve.serving.insight import gradcam, occlusion, rendering
from cnnserve.serving.insight.explainer import ExplainOptions, Insight
from cnnserve.serving.insight.filters import filter_tiles
from cnnserve.serving.model.repository import ModelVersion
from cnnserve.serving.model.runtime import SessionOptions
from cnnserve.serving.model.weights import LayerFilters

H = W = 28
REGION = (slice(10, 15), slice(6, 11))  # the only pixels the toy model looks at


def toy_model(tmp_path: Path, num_classes: int = 2) -> ModelVersion:
    config = model_config_pb2.ModelConfig(name="toy", max_batch_size=16, num_classes=num_classes)
    config.input.name = "input"
    config.input.dims.extend([H, W, 1])
    config.output.name = "probs"
    config.output_kind = model_config_pb2.SOFTMAX
    config.preprocessing.color_mode = model_config_pb2.GRAYSCALE
    config.preprocessing.height = H
    config.preprocessing.width = W
    config.preprocessing.scale = 1 / 255
    labels = tuple(f"class{i}" for i in range(num_classes))
    return ModelVersion(name="toy", version=1, path=tmp_path, config=config, labels=labels)


def toy_classify(batch: np.ndarray) -> np.ndarray:
    """P(class 1) = the mean brightness of REGION; class 0 gets the rest."""
    p1 = batch.reshape(-1, H, W)[:, REGION[0], REGION[1]].mean(axis=(1, 2))
    return np.stack([1 - p1, p1], axis=1).astype(np.float32)


def bright_image() -> np.ndarray:
    image = np.zeros((H, W, 1), dtype=np.float32)
    image[REGION[0], REGION[1]] = 1.0
    return image


def test_default_occlusion_settings_scale_with_the_input() -> None:
    assert occlusion.default_occlusion(28, 28) == (4, 2)
    assert occlusion.default_occlusion(150, 150) == (21, 10)
    assert occlusion.default_occlusion(32, 32) == (5, 2)


def test_occlusion_plan_covers_every_pixel_and_reaches_the_edges() -> None:
    plan = occlusion.OcclusionPlan.create(np.zeros((H, W, 1)), (H, W, 1), H, W, patch=5, stride=4)
    assert plan.rows == (0, 4, 8, 12, 16, 20, 23)  # the last patch is pushed to the edge
    covered = np.zeros((H, W), bool)
    for start, stop in plan.chunks(10):
        copies = plan.copies(start, stop).reshape(-1, H, W)
        for offset, index in enumerate(range(start, stop)):
            top, left = plan.position(index)
            assert np.all(copies[offset, top : top + 5, left : left + 5] == 0.0)
        covered |= (copies == 0).any(axis=0)
    assert covered.all()


def test_occluded_copies_hold_the_fill_exactly_under_the_patch() -> None:
    image = np.full((H, W, 1), 0.5, np.float32)
    plan = occlusion.OcclusionPlan.create(image, (H, W, 1), H, W, patch=3, stride=3, fill_value=-1.0)
    copy = plan.copies(7, 8)[0, ..., 0]
    top, left = plan.position(7)
    assert np.all(copy[top : top + 3, left : left + 3] == -1.0)
    assert (copy == -1.0).sum() == 9 and (copy == 0.5).sum() == H * W - 9


def test_occlusion_heat_is_the_mean_score_drop_and_lies_on_what_the_model_reads(tmp_path: Path) -> None:
    model = toy_model(tmp_path)
    result = Insight().explain(
        model, bright_image(), ExplainOptions(patch_size=3, stride=1), toy_classify, 16
    )
    heat = result.heatmap
    assert result.target_index == 1 and result.target_score == pytest.approx(1.0)
    assert heat.shape == (H, W)
    inside = np.zeros((H, W), bool)
    inside[REGION] = True
    # Covering a pixel the model ignores never lowers its score; every pixel it reads does.
    reach = np.zeros((H, W), bool)
    reach[8:17, 4:13] = True  # pixels whose 3x3 patches can touch REGION
    assert np.all(heat[~reach] == 0.0)
    assert np.all(heat[inside] > 0.0)
    # Exactly: a 3x3 patch fully inside the 5x5 region drops the mean by 9/25.
    assert heat[12, 8] == pytest.approx(9 / 25, abs=1e-6)


def test_target_class_chooses_the_explained_score(tmp_path: Path) -> None:
    model = toy_model(tmp_path)
    options = ExplainOptions(target_class=0, patch_size=3, stride=1)
    result = Insight().explain(model, bright_image(), options, toy_classify, 16)
    assert result.target_index == 0 and result.target_label == "class0"
    assert result.heatmap.max() <= 0.0 < -result.heatmap.min()  # covering the region raises P(class 0)


def test_occlusion_goes_through_classify_in_chunks_no_larger_than_the_batch(tmp_path: Path) -> None:
    sizes: list[int] = []

    def classify(batch: np.ndarray) -> np.ndarray:
        sizes.append(len(batch))
        return toy_classify(batch)

    insight = Insight()
    model = toy_model(tmp_path)
    result = insight.explain(model, bright_image(), ExplainOptions(), classify, 64)
    assert result.copies == 13 * 13  # default 4-pixel patch, stride 2
    # A small first chunk measures the model; a fast model then gets batches of up to 64, cut evenly.
    assert sizes == [8, 54, 54, 54]
    assert sum(sizes) == result.copies + 1  # the unaltered image rides with the first chunk
    sizes.clear()
    insight.explain(model, bright_image(), ExplainOptions(), classify, 64)
    assert sizes == [57, 57, 56]  # the next explanation starts from the measured rate


def test_a_slow_model_gets_chunks_that_take_about_the_chunk_time(tmp_path: Path) -> None:
    sizes: list[int] = []

    def slow_classify(batch: np.ndarray) -> np.ndarray:
        sizes.append(len(batch))
        time.sleep(0.004 * len(batch))  # 4 ms per image
        return toy_classify(batch)

    options = ExplainOptions(patch_size=7, stride=7)  # 16 copies
    result = Insight(chunk_seconds=0.02).explain(
        toy_model(tmp_path), bright_image(), options, slow_classify, 64
    )
    expected = Insight(chunk_seconds=0).explain(
        toy_model(tmp_path), bright_image(), options, toy_classify, 64
    )
    assert sizes[0] <= 8 and all(1 <= size <= 5 for size in sizes[1:]), sizes  # sleep() is never shorter
    np.testing.assert_array_equal(result.heatmap, expected.heatmap)


def test_async_explain_awaits_each_chunk_before_sending_the_next(tmp_path: Path) -> None:
    in_flight = 0
    most = 0
    calls = 0

    async def classify(batch: np.ndarray) -> np.ndarray:
        nonlocal in_flight, most, calls
        in_flight += 1
        calls += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.001)
        in_flight -= 1
        return toy_classify(batch)

    model = toy_model(tmp_path)
    options = ExplainOptions(patch_size=3, stride=1)
    result = asyncio.run(Insight().explain_async(model, bright_image(), options, classify, 16))
    expected = Insight().explain(model, bright_image(), options, toy_classify, 16)
    assert most == 1 and calls >= -(-(result.copies + 1) // 16)
    np.testing.assert_array_equal(result.heatmap, expected.heatmap)


def test_async_explain_keeps_chunks_in_flight_side_by_side_in_even_sizes(tmp_path: Path) -> None:
    """Two chunks at a time (the batcher runs two batches at once): 170 items in 4 chunks of 43, not
    64 + 64 and then 42 alone; the scores still land in order."""
    in_flight = 0
    most = 0
    sizes: list[int] = []

    async def classify(batch: np.ndarray) -> np.ndarray:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        sizes.append(len(batch))
        await asyncio.sleep(0.002 if len(sizes) % 2 else 0.0)  # the first of each pair finishes last
        in_flight -= 1
        return toy_classify(batch)

    model = toy_model(tmp_path)
    insight = Insight(chunk_seconds=0)  # full-size chunks from the start
    result = asyncio.run(
        insight.explain_async(model, bright_image(), ExplainOptions(), classify, 64, chunks_in_flight=2)
    )
    expected = Insight().explain(model, bright_image(), ExplainOptions(), toy_classify, 64)
    assert most == 2 and sizes == [43, 43, 43, 41]
    np.testing.assert_array_equal(result.heatmap, expected.heatmap)
    assert result.target_index == expected.target_index


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (ExplainOptions(patch_size=29), "larger than the 28x28"),
        (ExplainOptions(patch_size=-1), "patch size must be positive"),
        (ExplainOptions(stride=-2), "stride must be positive"),
        (ExplainOptions(target_class=2), "outside model 'toy'"),
        (ExplainOptions(target_class=-1), "outside model 'toy'"),
        (ExplainOptions(fill_value=float("nan")), "finite"),
        (ExplainOptions(method="saliency"), "unknown explain method"),
    ],
)
def test_bad_explain_options_are_refused_before_any_work(
    tmp_path: Path, options: ExplainOptions, message: str
) -> None:
    def classify(batch: np.ndarray) -> np.ndarray:
        raise AssertionError("nothing may be computed for a bad request")

    with pytest.raises(InvalidRequestError, match=message):
        Insight().explain(toy_model(tmp_path), bright_image(), options, classify, 16)


def test_gradcam_without_a_gradient_graph_is_unavailable_with_the_reason(tmp_path: Path) -> None:
    model = toy_model(tmp_path)
    model.config.gradcam.unavailable_reason = "the model has no convolution"
    with pytest.raises(GradCamUnavailableError, match="no convolution"):
        Insight().explain(model, bright_image(), ExplainOptions(method="gradcam"), toy_classify, 16)


def test_bilinear_resize_uses_half_pixel_centres() -> None:
    values = np.array([[0.0, 1.0], [2.0, 3.0]], np.float32)
    resized = gradcam.resize_bilinear(values, 4, 4)
    np.testing.assert_allclose(resized[0], [0.0, 0.25, 0.75, 1.0], atol=1e-6)
    np.testing.assert_allclose(resized[:, 0], [0.0, 0.5, 1.5, 2.0], atol=1e-6)
    np.testing.assert_allclose(gradcam.resize_bilinear(np.full((7, 7), 2.5), 28, 28), 2.5, atol=1e-6)


def test_gradcam_weights_channels_by_mean_gradient_and_keeps_the_positive_part() -> None:
    activations = np.zeros((1, 2, 2, 2), np.float32)
    activations[0, :, :, 0] = [[1.0, 0.0], [0.0, 0.0]]
    activations[0, :, :, 1] = [[0.0, 0.0], [0.0, 1.0]]
    gradients = np.zeros_like(activations)
    gradients[0, :, :, 0] = 1.0  # channel 0 helps the score
    gradients[0, :, :, 1] = -1.0  # channel 1 hurts it: its place must stay cold
    cam = gradcam.gradcam_heatmap(activations, gradients, 2, 2)
    np.testing.assert_allclose(cam, [[1.0, 0.0], [0.0, 0.0]])
    assert gradcam.gradcam_heatmap(activations, -gradients - 5, 8, 8).max() == 0.0  # nothing positive


def _tiles_drawn(png: bytes, layout: rendering.MosaicLayout) -> int:
    picture = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert picture.shape[:2] == (layout.height, layout.width)
    drawn = 0
    for index in range(layout.rows * layout.cols):
        top, left = layout.origin(index)
        tile = picture[top : top + layout.tile_h, left : left + layout.tile_w]
        drawn += int(tile.max() != tile.min())
    return drawn


def test_filter_mosaic_has_one_tile_per_filter_in_colour_for_rgb_input() -> None:
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(3, 3, 3, 10)).astype(np.float32)
    filters = LayerFilters("conv1", "conv", kernel, np.zeros(10, np.float32), True)
    tiles = filter_tiles(filters, (32, 32, 3), rgb_input=True, input_channel=0)  # colour regardless
    assert tiles.shape == (10, 3, 3, 3)
    picture, layout = rendering.tile_mosaic(tiles)
    assert (layout.rows, layout.cols) == (3, 4)
    assert _tiles_drawn(rendering.encode_png(picture), layout) == 10
    # Per-tile normalisation: every tile spans the full range.
    top, left = layout.origin(9)
    assert picture[top : top + layout.tile_h, left : left + layout.tile_w].max() == 255
    # A colour tile keeps the kernel's own colour channels.
    assert not np.array_equal(picture[..., 0], picture[..., 1])


def test_filter_tiles_pick_one_input_channel_or_their_mean() -> None:
    kernel = np.arange(3 * 3 * 4 * 2, dtype=np.float32).reshape(3, 3, 4, 2)
    filters = LayerFilters("conv2", "conv", kernel, np.zeros(2, np.float32), True)
    np.testing.assert_array_equal(filter_tiles(filters, (28, 28, 1), False, 2)[1], kernel[:, :, 2, 1])
    np.testing.assert_allclose(filter_tiles(filters, (28, 28, 1), False)[0], kernel[:, :, :, 0].mean(-1))
    with pytest.raises(InvalidRequestError, match="4 input channels"):
        filter_tiles(filters, (28, 28, 1), False, 4)


def test_dense_filters_on_the_flat_input_are_drawn_as_images() -> None:
    kernel = np.random.default_rng(1).normal(size=(784, 5)).astype(np.float32)
    filters = LayerFilters("dense1", "dense", kernel, np.zeros(5, np.float32), True)
    tiles = filter_tiles(filters, (28, 28), False, input_channel=0)  # the proto's default: ignored
    assert tiles.shape == (5, 28, 28)
    np.testing.assert_array_equal(tiles[3].reshape(-1), kernel[:, 3])


def test_overlay_shows_the_image_beside_the_coloured_heat() -> None:
    preprocessing = model_config_pb2.Preprocessing(
        color_mode=model_config_pb2.GRAYSCALE, height=H, width=W, scale=1 / 255
    )
    heat = np.zeros((H, W), np.float32)
    heat[REGION] = 1.0
    png = rendering.overlay_png(bright_image(), heat, preprocessing)
    picture = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    zoom = picture.shape[0] // H
    assert picture.shape[0] >= rendering.MIN_OVERLAY_PIXELS
    left = picture[::zoom, : W * zoom : zoom]
    np.testing.assert_array_equal(left[..., 0], (bright_image()[..., 0] * 255).astype(int))
    right = picture[::zoom, -W * zoom :: zoom]
    hot, cold = right[12, 8], right[0, 0]
    assert hot[0] > hot[2] and hot.sum() > 3 * cold.sum()  # hot shows red and bright, cold stays dark
    low, high = rendering.turbo(np.array([0.15, 0.9]))
    assert low[2] > low[0] and high[0] > high[2]  # the colour map runs from blue to red


def test_a_corrupt_gradient_graph_makes_gradcam_unavailable_naming_the_file(tmp_path: Path) -> None:
    model = toy_model(tmp_path)
    model.config.gradcam.filename = "gradcam.onnx"
    (tmp_path / "gradcam.onnx").write_bytes(b"not an onnx model")
    with pytest.raises(GradCamUnavailableError, match=r"gradcam\.onnx"):
        Insight(SessionOptions(device="cpu")).explain(
            model, bright_image(), ExplainOptions(method="gradcam"), toy_classify, 16
        )
    (tmp_path / "gradcam.onnx").unlink()
    with pytest.raises(GradCamUnavailableError, match="is missing"):
        Insight().explain(model, bright_image(), ExplainOptions(method="gradcam"), toy_classify, 16)
