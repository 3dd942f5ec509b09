"""The parity checks export enforces: Keras vs ONNX Runtime on real held-out samples, edge cases, every
activation layer, and end to end from real image files through both stages' preprocessing.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cnnserve.export.convert import OUTPUT_NAME, LayerOutput
from cnnserve.export.parity import TensorStats, Top1Stats, probabilities, run_onnx

KerasForward = Callable[[np.ndarray], dict[str, np.ndarray]]


@dataclass(frozen=True)
class Thresholds:
    """What export enforces; every figure is also recorded in parity.json."""

    max_abs_error: float = 1e-4  # on class probabilities
    activation_max_rel_error: float = 1e-4  # per activation layer, relative to the layer's largest value
    min_top1_agreement: float = 1.0
    max_accuracy_drop: float = 1.0  # percentage points, for the fp16 / int8 variants
    gradcam_max_abs_error: float = 1e-3  # on the normalised Grad-CAM map
    # DCT-scaled JPEG decoding is turned on only when, on the photo check set, it agrees this well with
    # training preprocessing + Keras (top-1 share, and the largest class-probability difference).
    scaled_decoding_min_top1_agreement: float = 1.0
    scaled_decoding_max_abs_probability_difference: float = 1e-2

    def to_dict(self) -> dict[str, float]:
        return {
            "max_abs_error": self.max_abs_error,
            "activation_max_rel_error": self.activation_max_rel_error,
            "min_top1_agreement": self.min_top1_agreement,
            "max_accuracy_drop_points": self.max_accuracy_drop,
            "gradcam_max_abs_error": self.gradcam_max_abs_error,
            "scaled_decoding_min_top1_agreement": self.scaled_decoding_min_top1_agreement,
            "scaled_decoding_max_abs_probability_difference": (
                self.scaled_decoding_max_abs_probability_difference
            ),
        }

    def scaled_decoding_failures(self, figures: Mapping[str, Any]) -> list[str]:
        """Why the scaled-decoding figures miss these bounds (empty when they hold)."""
        failures = []
        if figures["top1_agreement"] < self.scaled_decoding_min_top1_agreement:
            failures.append(
                f"top-1 agreement {figures['top1_agreement']:.4f} < "
                f"{self.scaled_decoding_min_top1_agreement:g} (files {figures['disagreeing'][:10]})"
            )
        if figures["max_abs_probability_difference"] > self.scaled_decoding_max_abs_probability_difference:
            failures.append(
                f"max abs probability difference {figures['max_abs_probability_difference']:.3g} > "
                f"{self.scaled_decoding_max_abs_probability_difference:g}"
            )
        return failures


def edge_cases(
    held_out: np.ndarray, dims: Sequence[int], scale: float, offset: float, max_batch: int
) -> dict[str, np.ndarray]:
    """All-black and all-white images (through the preprocessing's scale/offset), batches of 1 and of max."""
    black = np.full((2, *dims), 0.0 * scale + offset, dtype=np.float32)
    white = np.full((2, *dims), 255.0 * scale + offset, dtype=np.float32)
    repeats = -(-max_batch // max(len(held_out), 1))
    full = np.concatenate([held_out] * repeats)[:max_batch] if len(held_out) else black[:0]
    return {
        "all_black": black,
        "all_white": white,
        "batch_of_1": held_out[:1],
        "batch_of_max": np.ascontiguousarray(full),
    }


@dataclass
class _CaseStats:
    output: TensorStats
    raw_output: TensorStats
    top1: Top1Stats
    layers: dict[str, TensorStats]
    activations_graph_output: TensorStats | None


def verify_graphs(
    keras_forward: KerasForward,
    class_session,  # onnxruntime.InferenceSession
    activation_session,  # the same session when model.onnx holds the activation outputs
    layers: Sequence[LayerOutput],
    output_kind: int,
    cases: Mapping[str, np.ndarray],
    max_batch: int,
    thresholds: Thresholds,
) -> tuple[dict[str, Any], list[str]]:
    """Run every case through Keras and both ONNX graphs; return the report and the threshold failures."""
    layer_names = [layer.name for layer in layers]
    graph_names = list(dict.fromkeys([OUTPUT_NAME, *(layer.output_name for layer in layers)]))
    separate = activation_session is not class_session
    report: dict[str, Any] = {}
    failures: list[str] = []
    overall_layers: dict[str, TensorStats] = {name: TensorStats() for name in layer_names}
    for case, data in cases.items():
        stats = _CaseStats(
            TensorStats(),
            TensorStats(),
            Top1Stats(),
            {name: TensorStats() for name in layer_names},
            TensorStats() if separate else None,
        )
        step = max(1, max_batch)
        for start in range(0, len(data), step):
            batch = np.ascontiguousarray(data[start : start + step], dtype=np.float32)
            reference = keras_forward(batch)
            if separate:
                raw = run_onnx(class_session, "input", [OUTPUT_NAME], batch)[OUTPUT_NAME]
                acts = run_onnx(activation_session, "input", graph_names, batch)
                assert stats.activations_graph_output is not None  # made whenever `separate`
                stats.activations_graph_output.update(reference[OUTPUT_NAME], acts[OUTPUT_NAME], start)
            else:
                acts = run_onnx(class_session, "input", graph_names, batch)
                raw = acts[OUTPUT_NAME]
            ref_probs = probabilities(reference[OUTPUT_NAME], output_kind)
            onnx_probs = probabilities(raw, output_kind)
            stats.raw_output.update(reference[OUTPUT_NAME], raw, start)
            stats.output.update(ref_probs, onnx_probs, start)
            stats.top1.update(ref_probs, onnx_probs, start)
            for name in layer_names:
                stats.layers[name].update(reference[name], acts[name], start)
                overall_layers[name].update(reference[name], acts[name], start)
        entry: dict[str, Any] = {
            "samples": len(data),
            "output": {
                **stats.output.to_dict(),
                "raw_max_abs_error": stats.raw_output.max_abs,
                "top1_agreement": stats.top1.agreement,
                "top1_disagreeing_samples": stats.top1.disagreeing,
            },
            "layers": {name: value.to_dict() for name, value in stats.layers.items()},
        }
        if stats.activations_graph_output is not None:
            entry["activations_graph_output"] = stats.activations_graph_output.to_dict()
        report[case] = entry
        if stats.output.max_abs > thresholds.max_abs_error:
            failures.append(
                f"{case}: output max abs error {stats.output.max_abs:.3g} > {thresholds.max_abs_error:g} "
                f"(sample {stats.output.worst_sample})"
            )
        if stats.top1.agreement < thresholds.min_top1_agreement:
            failures.append(
                f"{case}: top-1 agreement {stats.top1.agreement:.4f} < {thresholds.min_top1_agreement:g} "
                f"(samples {stats.top1.disagreeing[:10]})"
            )
        for name, value in stats.layers.items():
            if value.max_rel > thresholds.activation_max_rel_error:
                failures.append(
                    f"{case}: layer {name!r} max rel error {value.max_rel:.3g} > "
                    f"{thresholds.activation_max_rel_error:g} (max abs {value.max_abs:.3g}, "
                    f"sample {value.worst_sample})"
                )
        graph_out = stats.activations_graph_output
        if graph_out is not None and graph_out.max_rel > thresholds.activation_max_rel_error:
            failures.append(f"{case}: the activations graph's output differs by {graph_out.max_abs:.3g}")
    report["layers"] = {name: value.to_dict() for name, value in overall_layers.items()}
    return report, failures


def _to_pil(image: np.ndarray):
    from PIL import Image

    array = np.asarray(image)
    if array.dtype != np.uint8:
        array = np.clip(array, 0, 255).astype(np.uint8)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    return Image.fromarray(array, "L" if array.ndim == 2 else "RGB")


def write_image_files(raw: np.ndarray, folder: Path, model_hw: tuple[int, int]) -> list[Path]:
    """Each raw dataset image as a PNG and a JPEG at a size other than the model's (about 1.5× plus one)."""
    from PIL import Image

    height, width = model_hw
    size = (width * 3 // 2 + 1, height * 3 // 2 + 1)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, image in enumerate(raw):
        pil = _to_pil(image).resize(size, Image.Resampling.BICUBIC)
        for suffix, fmt, extra in ((".png", "PNG", {}), (".jpg", "JPEG", {"quality": 92})):
            path = folder / f"sample-{index:04d}{suffix}"
            buffer = io.BytesIO()
            pil.save(buffer, format=fmt, **extra)
            path.write_bytes(buffer.getvalue())
            paths.append(path)
    return paths


def _file_figures(
    names: Sequence[str],
    served: np.ndarray,
    trained: np.ndarray,
    onnx_probs: np.ndarray,
    keras_probs: np.ndarray,
) -> dict[str, Any]:
    """Serving path vs training path on the same files: top-1, probabilities and the input tensors."""
    top1 = Top1Stats()
    top1.update(keras_probs, onnx_probs)
    prob_stats = TensorStats()
    prob_stats.update(keras_probs, onnx_probs)
    difference = np.abs(served - trained)
    return {
        "images": len(names),
        "top1_agreement": top1.agreement,
        "disagreeing": [names[i] for i in top1.disagreeing],
        "max_abs_probability_difference": prob_stats.max_abs,
        "max_abs_input_difference": float(difference.max()) if difference.size else 0.0,
        "mean_abs_input_difference": float(difference.mean()) if difference.size else 0.0,
    }


def verify_end_to_end(
    paths: Sequence[Path],
    serving_preprocess: Callable[[bytes], np.ndarray],
    training_preprocess: Callable[[Path], np.ndarray],
    class_session,
    keras_predict: Callable[[np.ndarray], np.ndarray],
    output_kind: int,
) -> dict[str, Any]:
    """Image files → serving preprocessing → ONNX Runtime versus → training preprocessing → Keras."""
    result: dict[str, Any] = {}
    for fmt, suffix in (("png", ".png"), ("jpeg", ".jpg")):
        chosen = [path for path in paths if path.suffix == suffix]
        if not chosen:
            continue
        served = np.stack([serving_preprocess(path.read_bytes()) for path in chosen]).astype(np.float32)
        trained = np.stack([np.asarray(training_preprocess(path), dtype=np.float32) for path in chosen])
        trained = trained.reshape(served.shape)
        onnx_probs = probabilities(
            run_onnx(class_session, "input", [OUTPUT_NAME], served)[OUTPUT_NAME], output_kind
        )
        keras_probs = probabilities(keras_predict(trained), output_kind)
        result[fmt] = _file_figures([path.name for path in chosen], served, trained, onnx_probs, keras_probs)
    return result


def verify_photos(
    paths: Sequence[Path],
    full_preprocess: Callable[[bytes], np.ndarray],
    scaled_preprocess: Callable[[bytes], np.ndarray],
    training_preprocess: Callable[[Path], np.ndarray],
    class_session,
    keras_predict: Callable[[np.ndarray], np.ndarray],
    output_kind: int,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Photo-sized JPEGs through serving with full and with DCT-scaled decoding, each against training
    preprocessing + Keras (decoded once, in full, as training reads them); returns (full, scaled) figures."""
    names = [path.name for path in paths]
    encoded = [path.read_bytes() for path in paths]
    trained = np.stack([np.asarray(training_preprocess(path), dtype=np.float32) for path in paths])
    keras_probs = probabilities(keras_predict(trained), output_kind)
    figures = []
    for preprocess in (full_preprocess, scaled_preprocess):
        served = np.stack([preprocess(data) for data in encoded]).astype(np.float32)
        trained = trained.reshape(served.shape)
        onnx_probs = probabilities(
            run_onnx(class_session, "input", [OUTPUT_NAME], served)[OUTPUT_NAME], output_kind
        )
        figures.append(_file_figures(names, served, trained, onnx_probs, keras_probs))
    return figures[0], figures[1]
