"""The parity checks themselves: exact statistics, every bound's boundary, and the end-to-end tensor gate.

A bound is met when the measured figure equals it and broken by the next float beyond it; each test below
takes the figure the check recorded and tries both sides. Expected figures are computed here, from the
arrays, independently of the statistics classes under test.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny_graphs import DENSE, SIDE, Reference, classifier, session

from cnnserve.export.convert import OUTPUT_NAME
from cnnserve.export.parity import TensorStats, Top1Stats, probabilities, run_onnx
from cnnserve.export.verify import (
    SAME_PIPELINE,
    EndToEndBound,
    Thresholds,
    edge_cases,
    end_to_end_checks,
    verify_end_to_end,
    verify_graphs,
    verify_photos,
    write_image_files,
)
from cnnserve.protos import model_config_pb2
from cnnserve.serving.model.preprocessing import PreprocessSpec, preprocess_encoded

SOFTMAX = model_config_pb2.SOFTMAX
MAX_BATCH = 4  # ten samples make batches of 4, 4 and 2: shifts in later batches test the sample offsets


@pytest.fixture(scope="module")
def graph(tmp_path_factory: pytest.TempPathFactory):
    return session(classifier(tmp_path_factory.mktemp("tiny") / "model.onnx"))


@pytest.fixture
def held_out(rng: np.random.Generator) -> np.ndarray:
    """Ten distinct images, already scaled to [0, 1]."""
    return (rng.integers(0, 256, (10, SIDE, SIDE, 1)) / 255.0).astype(np.float32)


def _onnx(graph, batch: np.ndarray, name: str = OUTPUT_NAME) -> np.ndarray:
    return run_onnx(graph, "input", [name], np.ascontiguousarray(batch, dtype=np.float32))[name]


def _max_abs(reference: np.ndarray, candidate: np.ndarray) -> float:
    return float(np.max(np.abs(reference.astype(np.float64) - candidate.astype(np.float64))))


def _softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits.astype(np.float64) - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def _verify(graph, reference, cases, thresholds=None, activation_graph=None):
    return verify_graphs(
        reference,
        graph,
        activation_graph if activation_graph is not None else graph,
        [DENSE],
        SOFTMAX,
        cases,
        MAX_BATCH,
        thresholds or Thresholds(),
    )


# --- the graph checks ---------------------------------------------------------------------------------


def test_identical_graphs_record_exactly_zero(graph, held_out: np.ndarray) -> None:
    report, failures = _verify(graph, Reference(graph), {"held_out": held_out})
    assert failures == []
    largest = float(np.max(_onnx(graph, held_out)))
    assert report["held_out"]["samples"] == 10
    assert report["held_out"]["output"] == {
        "max_abs_error": 0.0,
        "max_rel_error": 0.0,
        "max_abs_value": largest,
        "worst_sample": -1,
        "samples": 10,
        "raw_max_abs_error": 0.0,
        "top1_agreement": 1.0,
        "top1_disagreeing_samples": [],
    }
    dense = float(np.max(np.abs(_onnx(graph, held_out, DENSE.output_name))))
    assert report["held_out"]["layers"]["dense"]["max_abs_value"] == dense
    assert report["layers"]["dense"]["max_abs_error"] == 0.0
    assert "activations_graph_output" not in report["held_out"]


def test_a_difference_is_recorded_at_its_sample_and_fails_the_bound(graph, held_out: np.ndarray) -> None:
    """Sample 6 sits in the second batch of four: its index is the batch's offset plus its row."""
    probs = _onnx(graph, held_out)
    top = int(probs[6].argmax())
    reference = Reference(graph)
    reference.shift(held_out[6], OUTPUT_NAME, top, 0.25)  # raises the top class: top-1 still agrees
    report, failures = _verify(graph, reference, {"held_out": held_out})
    expected = abs(float(np.float32(probs[6, top] + np.float32(0.25))) - float(probs[6, top]))
    output = report["held_out"]["output"]
    assert output["max_abs_error"] == expected
    assert output["raw_max_abs_error"] == expected  # softmax heads: raw output and probabilities agree
    assert output["worst_sample"] == 6
    assert output["max_rel_error"] == expected / float(np.float32(probs[6, top] + np.float32(0.25)))
    assert output["top1_agreement"] == 1.0
    assert failures == [f"held_out: output max abs error {expected:.3g} > 0.0001 (sample 6)"]


def test_every_case_and_the_overall_layer_figures_are_kept_apart(graph, held_out: np.ndarray) -> None:
    reference = Reference(graph)
    reference.shift(held_out[9], DENSE.output_name, 0, -0.5)
    cases = {"first": held_out[:5], "second": held_out[5:]}
    report, failures = _verify(graph, reference, cases)
    assert report["first"]["layers"]["dense"]["max_abs_error"] == 0.0
    second = report["second"]["layers"]["dense"]
    dense = _onnx(graph, held_out, DENSE.output_name)
    shifted = float(np.float32(dense[9, 0] - np.float32(0.5)))
    assert second["max_abs_error"] == abs(shifted - float(dense[9, 0]))
    assert second["worst_sample"] == 4  # the case's own index: held_out[9] is the second case's fifth
    overall = report["layers"]["dense"]
    assert overall["max_abs_error"] == second["max_abs_error"] and overall["samples"] == 10
    assert overall["worst_sample"] == 4  # an index within its case, as in the case's own figures
    assert len(failures) == 1 and failures[0].startswith("second: layer 'dense' max rel error")
    assert "sample 4" in failures[0]


def _shifted_output(graph, held_out: np.ndarray, flip: bool) -> Reference:
    """Sample 7 made to differ: by 0.01 on its top class, or enough on another class to change its top-1."""
    probs = _onnx(graph, held_out)
    top = int(probs[7].argmax())
    reference = Reference(graph)
    if flip:
        reference.shift(held_out[7], OUTPUT_NAME, (top + 1) % probs.shape[1], 1.0)
    else:
        reference.shift(held_out[7], OUTPUT_NAME, top, 0.01)
    return reference


@pytest.mark.parametrize(
    ("field", "figure", "flip", "message"),
    [
        ("max_abs_error", ("output", "max_abs_error"), False, "output max abs error"),
        ("activation_max_rel_error", ("layers", "dense", "max_rel_error"), False, "layer 'dense'"),
        ("min_top1_agreement", ("output", "top1_agreement"), True, "top-1 agreement"),
    ],
)
def test_a_figure_equal_to_its_bound_passes_and_the_next_float_beyond_fails(
    graph, held_out: np.ndarray, field: str, figure: tuple[str, ...], flip: bool, message: str
) -> None:
    reference = _shifted_output(graph, held_out, flip)
    if field == "activation_max_rel_error":
        reference = Reference(graph)
        reference.shift(held_out[7], DENSE.output_name, 1, 0.5)
    loose = {"max_abs_error": math.inf, "activation_max_rel_error": math.inf, "min_top1_agreement": 0.0}
    measured, _ = _verify(graph, reference, {"held_out": held_out}, Thresholds(**loose))
    value = measured["held_out"]
    for key in figure:
        value = value[key]
    assert value > 0.0
    if field == "min_top1_agreement":
        assert value == 0.9  # nine of ten samples agree
        beyond = float(np.nextafter(value, 1.0))  # a higher minimum is broken
    else:
        beyond = float(np.nextafter(value, 0.0))  # a lower maximum is broken
    _, at_bound = _verify(graph, reference, {"held_out": held_out}, Thresholds(**{**loose, field: value}))
    assert at_bound == []
    _, past_bound = _verify(graph, reference, {"held_out": held_out}, Thresholds(**{**loose, field: beyond}))
    assert len(past_bound) == 1 and message in past_bound[0], past_bound
    assert ("sample 7" in past_bound[0]) or ("samples [7]" in past_bound[0])


def test_a_separate_activations_graph_is_checked_against_the_reference_too(
    graph, held_out: np.ndarray, tmp_path: Path
) -> None:
    same = session(classifier(tmp_path / "same.onnx"))
    report, failures = _verify(graph, Reference(graph), {"held_out": held_out}, activation_graph=same)
    assert failures == []
    assert report["held_out"]["activations_graph_output"]["max_abs_error"] == 0.0

    other = session(classifier(tmp_path / "other.onnx", bias_shift=0.5))
    # The sample the two graphs differ on most goes last, into the last batch: its index counts the batches.
    per_sample = np.abs(_onnx(graph, held_out).astype(np.float64) - _onnx(other, held_out)).max(axis=1)
    held_out = held_out[np.argsort(per_sample, kind="stable")]
    report, failures = _verify(graph, Reference(graph), {"held_out": held_out}, activation_graph=other)
    graph_output = report["held_out"]["activations_graph_output"]
    expected = _max_abs(_onnx(graph, held_out), _onnx(other, held_out))
    assert graph_output["max_abs_error"] == expected > 0.0
    assert graph_output["worst_sample"] == 9
    assert report["held_out"]["output"]["max_abs_error"] == 0.0  # classification used the class graph
    assert any(f"the activations graph's output differs by {expected:.3g}" in f for f in failures)

    def graph_failures(bound: float) -> list[str]:
        thresholds = Thresholds(activation_max_rel_error=bound)
        _, found = _verify(graph, Reference(graph), {"held_out": held_out}, thresholds, other)
        return [failure for failure in found if "activations graph" in failure]

    assert graph_failures(graph_output["max_rel_error"]) == []
    assert len(graph_failures(float(np.nextafter(graph_output["max_rel_error"], 0.0)))) == 1


def test_a_logits_head_is_compared_as_probabilities(tmp_path: Path, held_out: np.ndarray) -> None:
    """The threshold is on probabilities (softmax of the logits); the raw difference is recorded beside it."""
    logits = session(classifier(tmp_path / "logits.onnx", head="logits"))
    reference = Reference(logits)
    reference.shift(
        held_out[5], OUTPUT_NAME, 0, 1.0
    )  # every logit of sample 5 up by one would change nothing
    report, _ = verify_graphs(
        reference,
        logits,
        logits,
        [DENSE],
        model_config_pb2.LOGITS,
        {"held_out": held_out},
        MAX_BATCH,
        Thresholds(),
    )
    raw = _onnx(logits, held_out)
    shifted = raw.copy()
    shifted[5, 0] += np.float32(1.0)

    output = report["held_out"]["output"]
    assert output["raw_max_abs_error"] == _max_abs(shifted, raw)
    assert output["max_abs_error"] == pytest.approx(_max_abs(_softmax(shifted), _softmax(raw)), rel=1e-12)
    assert output["max_abs_error"] < output["raw_max_abs_error"]
    assert output["worst_sample"] == 5


@pytest.mark.parametrize(("max_batch", "sizes"), [(4, [4, 4, 2]), (10, [10]), (0, [1] * 10)])
def test_samples_reach_both_runtimes_in_batches_of_at_most_max_batch(
    graph, held_out: np.ndarray, max_batch: int, sizes: list[int]
) -> None:
    seen: list[tuple[int, np.dtype]] = []
    reference = Reference(graph)

    def recording(batch: np.ndarray) -> dict[str, np.ndarray]:
        seen.append((len(batch), batch.dtype))
        return reference(batch)

    # float64 samples are compared as the float32 the graph takes
    cases = {"held_out": held_out.astype(np.float64)}
    _, failures = verify_graphs(recording, graph, graph, [DENSE], SOFTMAX, cases, max_batch, Thresholds())
    assert failures == []
    assert seen == [(size, np.dtype(np.float32)) for size in sizes]


def test_at_most_ten_disagreeing_samples_are_named(graph, rng: np.random.Generator) -> None:
    held = (rng.integers(0, 256, (12, SIDE, SIDE, 1)) / 255.0).astype(np.float32)
    probs = _onnx(graph, held)
    reference = Reference(graph)
    for index, image in enumerate(held):
        reference.shift(image, OUTPUT_NAME, (int(probs[index].argmax()) + 1) % probs.shape[1], 2.0)
    report, failures = _verify(graph, reference, {"held_out": held}, Thresholds(max_abs_error=math.inf))
    assert report["held_out"]["output"]["top1_disagreeing_samples"] == list(range(12))
    assert failures == ["held_out: top-1 agreement 0.0000 < 1 (samples [0, 1, 2, 3, 4, 5, 6, 7, 8, 9])"]


def test_thresholds_are_recorded_whole() -> None:
    measured = EndToEndBound(
        max_input_difference=0.002, basis="measured: bench/x.py", max_probability_difference=0.01
    )
    thresholds = Thresholds(
        max_abs_error=1e-3,
        activation_max_rel_error=2e-3,
        min_top1_agreement=0.99,
        max_accuracy_drop=0.5,
        gradcam_max_abs_error=4e-3,
        end_to_end={"png": SAME_PIPELINE, "large_jpeg": measured},
        scaled_decoding_min_top1_agreement=0.98,
        scaled_decoding_max_abs_probability_difference=0.02,
    )
    assert thresholds.to_dict() == {
        "max_abs_error": 1e-3,
        "activation_max_rel_error": 2e-3,
        "min_top1_agreement": 0.99,
        "max_accuracy_drop_points": 0.5,
        "gradcam_max_abs_error": 4e-3,
        "end_to_end": {
            "png": {
                "max_input_difference": 0.0,
                "max_probability_difference": 1e-3,
                "basis": SAME_PIPELINE.basis,
            },
            "large_jpeg": {
                "max_input_difference": 0.002,
                "max_probability_difference": 0.01,
                "basis": "measured: bench/x.py",
            },
        },
        "scaled_decoding_min_top1_agreement": 0.98,
        "scaled_decoding_max_abs_probability_difference": 0.02,
    }
    assert thresholds.end_to_end_bound("large_jpeg") is measured
    with pytest.raises(ValueError, match=r"check 'gif' \(bounds exist for: large_jpeg, png\)$"):
        thresholds.end_to_end_bound("gif")
    with pytest.raises(ValueError, match=r"check 'png' \(bounds exist for: none\)$"):
        Thresholds(end_to_end={}).end_to_end_bound("png")
    assert Thresholds().end_to_end == {
        "png": SAME_PIPELINE,
        "jpeg": SAME_PIPELINE,
        "photo_jpeg": SAME_PIPELINE,
    }


# --- the statistics ----------------------------------------------------------------------------------


def test_tensor_stats_keep_the_first_worst_sample_across_batches() -> None:
    stats = TensorStats()
    stats.update(np.array([[1.0, -4.0], [2.0, 0.0]]), np.array([[1.0, -4.5], [2.0, 0.0]]), first_index=0)
    stats.update(np.array([[0.0, 8.0], [3.0, 3.0]]), np.array([[0.0, 8.0], [3.0, 2.5]]), first_index=2)
    assert (stats.max_abs, stats.worst_sample, stats.max_ref, stats.count) == (0.5, 0, 8.0, 4)
    assert stats.max_rel == 0.0625
    stats.update(np.array([[1.0, 1.0]]), np.array([[1.0, 0.25]]), first_index=4)
    assert (stats.max_abs, stats.worst_sample) == (0.75, 4)
    assert stats.to_dict() == {
        "max_abs_error": 0.75,
        "max_rel_error": 0.09375,
        "max_abs_value": 8.0,
        "worst_sample": 4,
        "samples": 5,
    }


def test_tensor_stats_of_all_zero_references_report_the_absolute_error() -> None:
    stats = TensorStats()
    stats.update(np.zeros((2, 3)), np.full((2, 3), 0.125))
    assert stats.max_rel == stats.max_abs == 0.125
    stats.update(np.zeros((0, 3)), np.zeros((0, 3)))  # an empty batch changes nothing
    assert (stats.max_abs, stats.worst_sample, stats.count) == (0.125, 0, 2)


def test_tensor_stats_measure_float32_differences_exactly() -> None:
    """1 - 1e-8 is not a float32: a difference taken in float32 would round it to 1."""
    stats = TensorStats()
    stats.update(np.array([[1.0]], dtype=np.float32), np.array([[1e-8]], dtype=np.float32))
    assert stats.max_abs == 1.0 - float(np.float32(1e-8)) != 1.0


def test_tensor_stats_reduce_every_axis_but_the_batch() -> None:
    stats = TensorStats()
    images = np.zeros((3, 2, 2, 1))
    shifted = images.copy()
    shifted[2, 1, 0, 0] = 0.5
    shifted[0, 0, 1, 0] = 0.25
    stats.update(images, shifted)
    assert (stats.max_abs, stats.worst_sample, stats.count) == (0.5, 2, 3)
    flat = TensorStats()
    flat.update(np.array([0.0, 1.0, 2.0]), np.array([0.0, 1.0, 2.5]), first_index=7)
    assert (flat.max_abs, flat.worst_sample) == (0.5, 9)


def test_tensor_stats_refuse_different_shapes() -> None:
    with pytest.raises(ValueError, match=r"Keras \(2, 3\) vs ONNX \(2, 4\)"):
        TensorStats().update(np.zeros((2, 3)), np.zeros((2, 4)))


def test_top1_stats_count_agreement_and_name_disagreeing_samples() -> None:
    stats = Top1Stats()
    assert stats.agreement == 1.0  # nothing compared yet: nothing disagrees
    reference = np.eye(3)[[0, 1, 2, 0]]
    stats.update(reference, np.eye(3)[[0, 2, 2, 1]], first_index=10)
    assert (stats.agree, stats.count, stats.disagreeing) == (2, 4, [11, 13])
    assert stats.agreement == 0.5
    many = Top1Stats()
    many.update(np.eye(2)[[0] * 30], np.eye(2)[[1] * 30])
    assert many.disagreeing == list(range(20))  # at most twenty named per batch


def test_probabilities_follow_each_head_kind() -> None:
    logits = np.array([[1.0, 2.0, 4.0]], dtype=np.float32)
    total = math.exp(1.0) + math.exp(2.0) + math.exp(4.0)
    np.testing.assert_allclose(
        probabilities(logits, model_config_pb2.LOGITS),
        [[math.exp(1.0) / total, math.exp(2.0) / total, math.exp(4.0) / total]],
        rtol=1e-15,
    )
    sigmoid = probabilities(np.array([[0.25], [0.875]], dtype=np.float32), model_config_pb2.SIGMOID)
    assert sigmoid.tolist() == [[0.75, 0.25], [0.125, 0.875]]
    softmax = probabilities(np.array([[0.5, 0.25, 0.25]], dtype=np.float32), SOFTMAX)
    assert softmax.dtype == np.float64 and softmax.tolist() == [[0.5, 0.25, 0.25]]


def test_edge_cases_are_black_white_one_and_a_full_batch() -> None:
    held = np.arange(3 * 2 * 2, dtype=np.float32).reshape(3, 2, 2, 1)
    cases = edge_cases(held, (2, 2, 1), scale=0.5, offset=-1.0, max_batch=7)
    assert list(cases) == ["all_black", "all_white", "batch_of_1", "batch_of_max"]
    for name, value in (("all_black", -1.0), ("all_white", 126.5)):  # 0 and 255, times 0.5, minus 1
        assert cases[name].shape == (2, 2, 2, 1) and cases[name].dtype == np.float32
        assert np.all(cases[name] == value)
    np.testing.assert_array_equal(cases["batch_of_1"], held[:1])
    np.testing.assert_array_equal(cases["batch_of_max"], held[[0, 1, 2, 0, 1, 2, 0]])
    assert cases["batch_of_max"].flags.c_contiguous
    one = edge_cases(held[:1], (2, 2, 1), 1.0, 0.0, max_batch=3)["batch_of_max"]
    np.testing.assert_array_equal(one, held[[0, 0, 0]])


# --- end to end from image files ---------------------------------------------------------------------


def _spec(scale: float) -> PreprocessSpec:
    pre = model_config_pb2.Preprocessing(
        color_mode=model_config_pb2.GRAYSCALE,
        height=SIDE,
        width=SIDE,
        resize_filter=model_config_pb2.BILINEAR,
        scale=scale,
    )
    return PreprocessSpec.from_config(pre, (SIDE, SIDE, 1))


def _pixels(path: Path) -> np.ndarray:
    """The file decoded and resized the way a Keras user reads it (Pillow, greyscale, bilinear), as uint8."""
    with Image.open(path) as image:
        return np.asarray(image.convert("L").resize((SIDE, SIDE), Image.Resampling.BILINEAR))


def _training(path: Path) -> np.ndarray:
    scale = np.float32(model_config_pb2.Preprocessing(scale=1 / 255).scale)  # as stored in the config
    return (_pixels(path).astype(np.float32) * scale).reshape(SIDE, SIDE, 1)


@pytest.fixture
def image_files(tmp_path: Path, rng: np.random.Generator) -> list[Path]:
    raw = rng.integers(0, 256, (3, SIDE, SIDE), dtype=np.uint8)
    return write_image_files(raw, tmp_path / "images", (SIDE, SIDE))


def _end_to_end(graph, paths, serving_scale=1 / 255, thresholds=None, predict=None):
    spec = _spec(serving_scale)
    return verify_end_to_end(
        end_to_end_checks(paths),
        lambda data: preprocess_encoded(data, spec),
        _training,
        graph,
        predict or (lambda batch: _onnx(graph, batch)),
        SOFTMAX,
        thresholds or Thresholds(),
    )


@pytest.mark.parametrize(("shape", "mode"), [((2, 4, 4), "L"), ((2, 4, 4, 1), "L"), ((2, 4, 4, 3), "RGB")])
def test_image_files_are_the_raw_images_resized(
    tmp_path: Path, rng: np.random.Generator, shape: tuple[int, ...], mode: str
) -> None:
    import io

    raw = rng.integers(0, 256, shape, dtype=np.uint8)
    paths = write_image_files(raw, tmp_path / "new" / "images", (4, 4))  # folders made as needed
    for index in range(2):
        pixels = raw[index][..., 0] if shape[-1] == 1 else raw[index]
        expected = Image.fromarray(pixels).resize((7, 7), Image.Resampling.BICUBIC)  # 4 * 3 // 2 + 1
        with Image.open(paths[2 * index]) as png:
            assert png.mode == mode
            np.testing.assert_array_equal(np.asarray(png), np.asarray(expected))
        jpeg = io.BytesIO()
        expected.save(jpeg, format="JPEG", quality=92)
        assert paths[2 * index + 1].read_bytes() == jpeg.getvalue()


def test_image_files_come_as_png_and_jpeg_at_another_size(tmp_path: Path) -> None:
    raw = np.zeros((2, SIDE, SIDE, 1), dtype=np.uint8)
    raw[1] = 200
    paths = write_image_files(raw, tmp_path, (SIDE, SIDE))
    assert [p.name for p in paths] == [
        "sample-0000.png",
        "sample-0000.jpg",
        "sample-0001.png",
        "sample-0001.jpg",
    ]
    for path in paths:
        with Image.open(path) as image:
            assert image.size == (10, 10) and image.mode == "L"  # 6 * 3 // 2 + 1
    with Image.open(paths[2]) as image:
        assert np.all(np.asarray(image) == 200)  # PNG is lossless
    assert end_to_end_checks(paths) == {"png": paths[0::2], "jpeg": paths[1::2]}
    with pytest.raises(ValueError, match=r"x\.gif.*'\.gif'"):
        end_to_end_checks([tmp_path / "x.gif"])


def test_identical_pipelines_differ_by_exactly_zero(graph, image_files: list[Path]) -> None:
    report, failures = _end_to_end(graph, image_files)
    assert failures == []
    assert list(report) == ["png", "jpeg"]
    for check in ("png", "jpeg"):
        assert report[check] == {
            "images": 3,
            "top1_agreement": 1.0,
            "disagreeing": [],
            "max_abs_probability_difference": 0.0,
            "max_abs_input_difference": 0.0,
            "mean_abs_input_difference": 0.0,
            "worst_input_file": None,
            "bound": {
                "max_input_difference": 0.0,
                "max_probability_difference": 1e-4,
                "basis": SAME_PIPELINE.basis,
            },
            "passed": True,
        }


def test_serving_scaling_by_1_over_256_fails_the_export(graph, image_files: list[Path]) -> None:
    """A skew too small to change any top-1 label still changes the tensor, and the tensor is gated."""
    report, failures = _end_to_end(graph, image_files, serving_scale=1 / 256)
    for check, suffix in (("png", ".png"), ("jpeg", ".jpg")):
        paths = [p for p in image_files if p.suffix == suffix]
        pixels = [_pixels(p).astype(np.float32) for p in paths]
        per_file = [
            float(np.max(np.abs(v * np.float32(_spec(1 / 256).scale) - v * np.float32(_spec(1 / 255).scale))))
            for v in pixels
        ]
        entry = report[check]
        assert entry["max_abs_input_difference"] == max(per_file)
        assert entry["worst_input_file"] == paths[int(np.argmax(per_file))].name
        assert entry["passed"] is False
        served = np.stack([preprocess_encoded(p.read_bytes(), _spec(1 / 256)) for p in paths])
        trained = np.stack([_training(p) for p in paths])
        assert entry["mean_abs_input_difference"] == pytest.approx(
            float(np.mean(np.abs(served.astype(np.float64) - trained))), rel=1e-12
        )
        assert entry["max_abs_probability_difference"] == _max_abs(
            _onnx(graph, trained), _onnx(graph, served)
        )
        assert any(
            f.startswith(f"end to end ({check} files): serving's input tensor differs from training's by ")
            and f"> 0 (file {entry['worst_input_file']}; bound: {SAME_PIPELINE.basis})" in f
            for f in failures
        ), failures


def _bounds(report, input_bound=None, probability_bound=None) -> Thresholds:
    return Thresholds(
        end_to_end={
            check: EndToEndBound(
                max_input_difference=report[check]["max_abs_input_difference"]
                if input_bound is None
                else input_bound(report[check]),
                basis="measured on these files",
                max_probability_difference=(
                    report[check]["max_abs_probability_difference"]
                    if probability_bound is None
                    else probability_bound(report[check])
                ),
            )
            for check in ("png", "jpeg")
        }
    )


def test_an_input_difference_equal_to_its_bound_passes_and_one_beyond_fails(graph, image_files) -> None:
    measured, _ = _end_to_end(graph, image_files, serving_scale=1 / 256)
    report, failures = _end_to_end(graph, image_files, 1 / 256, _bounds(measured))
    assert failures == []
    assert report["png"]["passed"] is True
    assert report["png"]["bound"] == {
        "max_input_difference": measured["png"]["max_abs_input_difference"],
        "max_probability_difference": measured["png"]["max_abs_probability_difference"],
        "basis": "measured on these files",
    }
    tighter = _bounds(
        measured, input_bound=lambda entry: float(np.nextafter(entry["max_abs_input_difference"], 0))
    )
    _, failures = _end_to_end(graph, image_files, 1 / 256, tighter)
    assert len(failures) == 2 and all("input tensor differs" in f for f in failures), failures


def test_a_probability_difference_equal_to_its_bound_passes_and_one_beyond_fails(graph, image_files) -> None:
    measured, _ = _end_to_end(graph, image_files, serving_scale=1 / 256)
    assert measured["png"]["max_abs_probability_difference"] > 0.0
    tighter = _bounds(
        measured, probability_bound=lambda e: float(np.nextafter(e["max_abs_probability_difference"], 0))
    )
    _, failures = _end_to_end(graph, image_files, 1 / 256, tighter)
    assert len(failures) == 2 and all("class probabilities differ by" in f for f in failures), failures


def test_the_probability_bound_defaults_to_the_conversion_bound(graph, image_files) -> None:
    bound = EndToEndBound(max_input_difference=1.0, basis="loose")
    thresholds = Thresholds(max_abs_error=0.5, end_to_end={"png": bound, "jpeg": bound})
    report, _ = _end_to_end(graph, image_files, thresholds=thresholds)
    assert report["jpeg"]["bound"]["max_probability_difference"] == 0.5
    assert thresholds.to_dict()["end_to_end"]["png"] == {
        "max_input_difference": 1.0,
        "max_probability_difference": 0.5,
        "basis": "loose",
    }


def test_end_to_end_top1_agreement_equal_to_its_minimum_passes(graph, image_files) -> None:
    def disagree_on_first(batch: np.ndarray) -> np.ndarray:
        probs = _onnx(graph, batch).copy()
        probs[0] = np.roll(probs[0], 1)  # another class on top for the first file of each check
        return probs

    loose = EndToEndBound(max_input_difference=0.0, basis="same", max_probability_difference=1.0)
    at_minimum = Thresholds(min_top1_agreement=2 / 3, end_to_end={"png": loose, "jpeg": loose})
    report, failures = _end_to_end(graph, image_files, thresholds=at_minimum, predict=disagree_on_first)
    assert report["png"]["top1_agreement"] == 2 / 3 and report["png"]["disagreeing"] == ["sample-0000.png"]
    assert failures == []
    beyond = Thresholds(min_top1_agreement=float(np.nextafter(2 / 3, 1)), end_to_end=at_minimum.end_to_end)
    _, failures = _end_to_end(graph, image_files, thresholds=beyond, predict=disagree_on_first)
    assert failures[0].startswith("end to end (png files): top-1 agreement 0.6667 < 0.666667")
    assert "['sample-0000.png']" in failures[0] and len(failures) == 2


def test_training_tensors_are_compared_as_the_float32_keras_receives(graph, image_files) -> None:
    """A training pipeline that scales in float64 is compared after the cast Keras applies, not before."""

    def training_float64(path: Path) -> np.ndarray:
        return _pixels(path).astype(np.float64) / 255.0  # (H, W): no channel axis either

    spec = _spec(1 / 255)
    report, _ = verify_end_to_end(
        end_to_end_checks(image_files),
        lambda data: preprocess_encoded(data, spec),
        training_float64,
        graph,
        lambda batch: _onnx(graph, batch),
        SOFTMAX,
        Thresholds(),
    )
    pngs = [p for p in image_files if p.suffix == ".png"]
    expected = max(
        _max_abs((_pixels(p).astype(np.float64) / 255.0).astype(np.float32), _training(p)[..., 0])
        for p in pngs
    )
    assert report["png"]["max_abs_input_difference"] == expected


def test_at_most_ten_disagreeing_files_are_named(graph, tmp_path: Path, rng: np.random.Generator) -> None:
    paths = write_image_files(rng.integers(0, 256, (11, SIDE, SIDE), dtype=np.uint8), tmp_path, (SIDE, SIDE))

    def disagree_on_all(batch: np.ndarray) -> np.ndarray:
        return np.roll(_onnx(graph, batch), 1, axis=1)

    loose = EndToEndBound(max_input_difference=0.0, basis="same", max_probability_difference=1.0)
    thresholds = Thresholds(end_to_end={"png": loose, "jpeg": loose})
    report, failures = _end_to_end(graph, paths, thresholds=thresholds, predict=disagree_on_all)
    names = [f"sample-{i:04d}.png" for i in range(11)]
    assert report["png"]["disagreeing"] == names
    assert failures[0].endswith(f"(files {names[:10]})")


def test_end_to_end_probabilities_of_a_logits_head(tmp_path: Path, image_files: list[Path]) -> None:
    logits = session(classifier(tmp_path / "logits.onnx", head="logits"))

    def shifted(batch: np.ndarray) -> np.ndarray:
        raw = _onnx(logits, batch).copy()
        raw[0, 0] += np.float32(1.0)
        return raw

    spec = _spec(1 / 255)
    report, failures = verify_end_to_end(
        end_to_end_checks(image_files),
        lambda data: preprocess_encoded(data, spec),
        _training,
        logits,
        shifted,
        model_config_pb2.LOGITS,
        Thresholds(),
    )
    pngs = np.stack([_training(p) for p in image_files if p.suffix == ".png"])
    raw = _onnx(logits, pngs)
    moved = raw.copy()
    moved[0, 0] += np.float32(1.0)
    expected = _max_abs(
        probabilities(moved, model_config_pb2.LOGITS), probabilities(raw, model_config_pb2.LOGITS)
    )
    assert report["png"]["max_abs_probability_difference"] == pytest.approx(expected, rel=1e-12)
    assert 0.0 < expected < 1.0
    assert any(f.startswith("end to end (png files): class probabilities differ by") for f in failures)


def test_a_check_without_a_stated_bound_is_refused(graph, image_files) -> None:
    thresholds = Thresholds(end_to_end={"png": SAME_PIPELINE})
    with pytest.raises(
        ValueError, match=r"no end-to-end bound is stated for the check 'jpeg' \(bounds exist for: png\)"
    ):
        _end_to_end(graph, image_files, thresholds=thresholds)


def test_an_empty_check_is_left_out(graph, image_files) -> None:
    report, failures = verify_end_to_end(
        {"png": [], "jpeg": image_files[1::2]},
        lambda data: preprocess_encoded(data, _spec(1 / 255)),
        _training,
        graph,
        lambda batch: _onnx(graph, batch),
        SOFTMAX,
        Thresholds(),
    )
    assert list(report) == ["jpeg"] and failures == []


# --- photographs: full decoding gated, scaled decoding measured --------------------------------------------


def _photos(tmp_path: Path, rng: np.random.Generator, count: int = 12) -> list[Path]:
    raw = rng.integers(0, 256, (count, SIDE, SIDE), dtype=np.uint8)
    return [p for p in write_image_files(raw, tmp_path / "photos", (SIDE, SIDE)) if p.suffix == ".jpg"]


def _every_other_black(paths: list[Path]):
    """A serving path that disagrees with training on some files: every other file comes out all black
    (the tiny model's class for black differs from the one it gives most noise images)."""
    blackened = {path.read_bytes() for path in paths[::2]}

    def preprocess(data: bytes) -> np.ndarray:
        tensor = preprocess_encoded(data, _spec(1 / 255))
        return np.zeros_like(tensor) if data in blackened else tensor

    return preprocess


def _verify_photos(graph, paths, full, scaled, thresholds=None):
    return verify_photos(
        paths,
        full,
        scaled,
        _training,
        graph,
        lambda batch: _onnx(graph, batch),
        SOFTMAX,
        thresholds or Thresholds(),
    )


def test_photos_gate_full_decoding_as_the_photo_jpeg_check_and_measure_scaled_decoding(
    graph, tmp_path: Path, rng: np.random.Generator
) -> None:
    paths = _photos(tmp_path, rng)
    same = _spec(1 / 255)
    scaled_path = _every_other_black(paths)
    entry, failures, scaled = _verify_photos(graph, paths, lambda d: preprocess_encoded(d, same), scaled_path)
    expected_entry, _ = verify_end_to_end(
        {"photo_jpeg": paths},
        lambda d: preprocess_encoded(d, same),
        _training,
        graph,
        lambda batch: _onnx(graph, batch),
        SOFTMAX,
        Thresholds(),
    )
    assert entry == expected_entry["photo_jpeg"] and failures == []
    assert entry["passed"] is True and entry["max_abs_input_difference"] == 0.0
    # The scaled-decoding figures, worked out here from the arrays.
    served = np.stack([scaled_path(p.read_bytes()) for p in paths])
    trained = np.stack([_training(p) for p in paths])
    onnx_served, onnx_trained = _onnx(graph, served), _onnx(graph, trained)
    agree = onnx_served.argmax(axis=1) == onnx_trained.argmax(axis=1)
    assert 0 < agree.sum() < len(paths)  # some files disagree, some do not
    difference = np.abs(served - trained)
    assert scaled == {
        "images": len(paths),
        "top1_agreement": float(agree.mean()),
        "disagreeing": [p.name for p, same_class in zip(paths, agree, strict=True) if not same_class],
        "max_abs_probability_difference": _max_abs(onnx_trained, onnx_served),
        "max_abs_input_difference": float(difference.max()),
        "mean_abs_input_difference": float(difference.mean()),
    }


def test_a_full_decoding_photo_path_that_differs_fails_its_bound(
    graph, tmp_path: Path, rng: np.random.Generator
) -> None:
    paths = _photos(tmp_path, rng, count=3)
    skewed = _spec(1 / 256)
    entry, failures, scaled = _verify_photos(
        graph, paths, lambda d: preprocess_encoded(d, skewed), _every_other_black(paths)
    )
    assert entry["passed"] is False and entry["max_abs_input_difference"] > 0
    assert failures and all(f.startswith("end to end (photo_jpeg files): ") for f in failures), failures
    assert scaled["images"] == 3


def _scaled_figures(top1: float, probability: float, disagreeing: int = 0) -> dict[str, object]:
    return {
        "top1_agreement": top1,
        "max_abs_probability_difference": probability,
        "disagreeing": [f"photo-{i}.jpg" for i in range(disagreeing)],
    }


def test_scaled_decoding_bounds_pass_at_their_value_and_fail_beyond() -> None:
    thresholds = Thresholds(
        scaled_decoding_min_top1_agreement=0.75, scaled_decoding_max_abs_probability_difference=0.02
    )
    assert thresholds.scaled_decoding_failures(_scaled_figures(0.75, 0.02)) == []
    below = math.nextafter(0.75, 0.0)
    beyond = math.nextafter(0.02, 1.0)
    assert thresholds.scaled_decoding_failures(_scaled_figures(below, beyond, disagreeing=12)) == [
        f"top-1 agreement {below:.4f} < 0.75 (files {[f'photo-{i}.jpg' for i in range(10)]})",
        f"max abs probability difference {beyond:.3g} > 0.02",
    ]
    assert thresholds.scaled_decoding_failures(_scaled_figures(1.0, beyond)) == [
        f"max abs probability difference {beyond:.3g} > 0.02"
    ]
    assert Thresholds().scaled_decoding_failures(_scaled_figures(1.0, 0.01)) == []  # the default bounds
    assert Thresholds().scaled_decoding_failures(_scaled_figures(1.0, 0.0101)) != []
    assert Thresholds().scaled_decoding_failures(_scaled_figures(0.99, 0.0)) != []
