"""The parity checks export enforces: Keras vs ONNX Runtime on real held-out samples, edge cases, every
activation layer, and end to end from real image files through both stages' preprocessing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cnnserve.export.convert import OUTPUT_NAME, LayerOutput
from cnnserve.export.parity import TensorStats, Top1Stats, probabilities, run_onnx

KerasForward = Callable[[np.ndarray], dict[str, np.ndarray]]


@dataclass(frozen=True)
class EndToEndBound:
    """How far one end-to-end check may find serving's path from training's, and what set the figures.

    `max_input_difference` bounds the largest absolute difference between the input tensor serving's
    preprocessing makes from an image file and the one training's preprocessing makes (after scale and
    offset). It is 0 where both pipelines decode, resize and scale alike: any difference there is skew. A
    check whose pipelines legitimately differ (a decoder that scales while decoding, say) states the bound
    it measured and how, in `basis`. `max_probability_difference` bounds the class probabilities, ONNX
    Runtime on serving's tensor against Keras on training's; None means the conversion's own bound
    (`Thresholds.max_abs_error`), all that is left when the inputs are identical.
    """

    max_input_difference: float
    basis: str
    max_probability_difference: float | None = None

    def to_dict(self, max_abs_error: float) -> dict[str, Any]:
        return {
            "max_input_difference": self.max_input_difference,
            "max_probability_difference": self.probability_bound(max_abs_error),
            "basis": self.basis,
        }

    def probability_bound(self, max_abs_error: float) -> float:
        if self.max_probability_difference is None:
            return max_abs_error
        return self.max_probability_difference


SAME_PIPELINE = EndToEndBound(
    max_input_difference=0.0,
    basis="serving decodes to the same pixels as training's Pillow (its fast decoders are exact), resizes "
    "with the same filter and scales in float32 alike",
)


def _default_end_to_end() -> dict[str, EndToEndBound]:
    return {"png": SAME_PIPELINE, "jpeg": SAME_PIPELINE, "photo_jpeg": SAME_PIPELINE}


@dataclass(frozen=True)
class Thresholds:
    """What export enforces; every figure is also recorded in parity.json.

    A failure is a measured figure strictly beyond its bound: a difference equal to its bound passes.
    """

    max_abs_error: float = 1e-4  # on class probabilities
    activation_max_rel_error: float = 1e-4  # per activation layer, relative to the layer's largest value
    min_top1_agreement: float = 1.0
    max_accuracy_drop: float = 1.0  # percentage points, for the fp16 / int8 variants
    gradcam_max_abs_error: float = 1e-3  # on the normalised Grad-CAM map
    # One bound per end-to-end check (by name: the image format, or a named set of files).
    end_to_end: Mapping[str, EndToEndBound] = field(default_factory=_default_end_to_end)
    # DCT-scaled JPEG decoding is turned on only when, on the photo check set, it agrees this well with
    # training preprocessing + Keras (top-1 share, and the largest class-probability difference).
    scaled_decoding_min_top1_agreement: float = 1.0
    scaled_decoding_max_abs_probability_difference: float = 1e-2

    def end_to_end_bound(self, check: str) -> EndToEndBound:
        """The bound of one end-to-end check; a check without a stated bound is a programming error."""
        try:
            return self.end_to_end[check]
        except KeyError:
            raise ValueError(
                f"no end-to-end bound is stated for the check {check!r} "
                f"(bounds exist for: {', '.join(sorted(self.end_to_end)) or 'none'})"
            ) from None

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_abs_error": self.max_abs_error,
            "activation_max_rel_error": self.activation_max_rel_error,
            "min_top1_agreement": self.min_top1_agreement,
            "max_accuracy_drop_points": self.max_accuracy_drop,
            "gradcam_max_abs_error": self.gradcam_max_abs_error,
            "end_to_end": {
                check: bound.to_dict(self.max_abs_error) for check, bound in self.end_to_end.items()
            },
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
    """All-black and all-white images (through the preprocessing's scale/offset), batches of 1 and of max.

    `held_out` is not empty; the batch of max repeats its samples in order until it has `max_batch`.
    """
    black = np.full((2, *dims), offset, dtype=np.float32)  # pixel value 0: 0 * scale + offset
    white = np.full((2, *dims), 255.0 * scale + offset, dtype=np.float32)
    full = held_out[np.arange(max_batch) % len(held_out)]
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
            stats.raw_output.update(reference[OUTPUT_NAME], raw)  # only its largest difference is kept
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

    array = np.asarray(image)  # uint8, as datasets load raw images
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]  # Pillow reads (H, W) as greyscale, (H, W, 3) as RGB
    return Image.fromarray(array)


def write_image_files(raw: np.ndarray, folder: Path, model_hw: tuple[int, int]) -> list[Path]:
    """Each raw dataset image as a PNG and a JPEG at a size other than the model's (about 1.5× plus one)."""
    from PIL import Image

    height, width = model_hw
    size = (width * 3 // 2 + 1, height * 3 // 2 + 1)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, image in enumerate(raw):
        pil = _to_pil(image).resize(size, Image.Resampling.BICUBIC)
        for suffix, options in ((".png", {}), (".jpg", {"quality": 92})):
            path = folder / f"sample-{index:04d}{suffix}"
            pil.save(path, **options)  # the format follows the suffix
            paths.append(path)
    return paths


def end_to_end_checks(paths: Sequence[Path]) -> dict[str, list[Path]]:
    """The image files of the end-to-end check grouped into one check per format ("png", "jpeg")."""
    checks: dict[str, list[Path]] = {}
    for path in paths:
        check = _FORMAT_OF_SUFFIX.get(path.suffix.lower())
        if check is None:
            raise ValueError(f"{path}: no end-to-end check takes {path.suffix!r} files")
        checks.setdefault(check, []).append(path)
    return checks


_FORMAT_OF_SUFFIX = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg"}


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
    checks: Mapping[str, Sequence[Path]],
    serving_preprocess: Callable[[bytes], np.ndarray],
    training_preprocess: Callable[[Path], np.ndarray],
    class_session,
    keras_predict: Callable[[np.ndarray], np.ndarray],
    output_kind: int,
    thresholds: Thresholds,
) -> tuple[dict[str, Any], list[str]]:
    """Image files → serving preprocessing → ONNX Runtime versus → training preprocessing → Keras.

    Each check compares the two input tensors and the two sets of class probabilities against its stated
    bound, and top-1 against `min_top1_agreement`; returns the report (one entry per check, recording the
    measured differences beside their bounds) and the failures.
    """
    report: dict[str, Any] = {}
    failures: list[str] = []
    for check, chosen in checks.items():
        bound = thresholds.end_to_end_bound(check)
        if not chosen:
            continue
        served = np.stack([serving_preprocess(path.read_bytes()) for path in chosen]).astype(np.float32)
        trained = np.stack([np.asarray(training_preprocess(path), dtype=np.float32) for path in chosen])
        trained = trained.reshape(served.shape)
        onnx_probs = probabilities(
            run_onnx(class_session, "input", [OUTPUT_NAME], served)[OUTPUT_NAME], output_kind
        )
        keras_probs = probabilities(keras_predict(trained), output_kind)
        top1 = Top1Stats()
        top1.update(keras_probs, onnx_probs)
        prob_stats = TensorStats()
        prob_stats.update(keras_probs, onnx_probs)
        input_stats = TensorStats()
        input_stats.update(trained, served)
        input_difference = np.abs(np.subtract(served, trained, dtype=np.float64))
        entry = {
            "images": len(chosen),
            "top1_agreement": top1.agreement,
            "disagreeing": [chosen[i].name for i in top1.disagreeing],
            "max_abs_probability_difference": prob_stats.max_abs,
            "max_abs_input_difference": input_stats.max_abs,
            "mean_abs_input_difference": float(input_difference.mean()),
            "worst_input_file": chosen[input_stats.worst_sample].name if input_stats.max_abs > 0 else None,
            "bound": bound.to_dict(thresholds.max_abs_error),
        }
        problems = _end_to_end_failures(check, entry, chosen, prob_stats, bound, thresholds)
        entry["passed"] = not problems
        failures.extend(problems)
        report[check] = entry
    return report, failures


def _end_to_end_failures(
    check: str,
    entry: Mapping[str, Any],
    chosen: Sequence[Path],
    prob_stats: TensorStats,
    bound: EndToEndBound,
    thresholds: Thresholds,
) -> list[str]:
    where = f"end to end ({check} files)"
    failures = []
    if entry["max_abs_input_difference"] > bound.max_input_difference:
        difference = entry["max_abs_input_difference"]
        failures.append(
            f"{where}: serving's input tensor differs from training's by {difference:.3g} > "
            f"{bound.max_input_difference:g} (file {entry['worst_input_file']}; bound: {bound.basis})"
        )
    probability_bound = bound.probability_bound(thresholds.max_abs_error)
    if prob_stats.max_abs > probability_bound:
        failures.append(
            f"{where}: class probabilities differ by {prob_stats.max_abs:.3g} > {probability_bound:g} "
            f"(file {chosen[prob_stats.worst_sample].name})"
        )
    if entry["top1_agreement"] < thresholds.min_top1_agreement:
        failures.append(
            f"{where}: top-1 agreement {entry['top1_agreement']:.4f} < {thresholds.min_top1_agreement:g} "
            f"between serving preprocessing + ONNX and training preprocessing + Keras "
            f"(files {entry['disagreeing'][:10]})"
        )
    return failures


def verify_photos(
    paths: Sequence[Path],
    full_preprocess: Callable[[bytes], np.ndarray],
    scaled_preprocess: Callable[[bytes], np.ndarray],
    training_preprocess: Callable[[Path], np.ndarray],
    class_session,
    keras_predict: Callable[[np.ndarray], np.ndarray],
    output_kind: int,
    thresholds: Thresholds,
) -> tuple[dict[str, Any], list[str], dict[str, Any]]:
    """Photo-sized JPEGs through serving with full and with DCT-scaled decoding, each against training
    preprocessing + Keras (decoded once, in full, as training reads them).

    Full decoding is the `photo_jpeg` end-to-end check, gated by its bound like every other; scaled decoding
    only decides whether the config turns it on (`Thresholds.scaled_decoding_failures`). Returns the full
    check's report entry, its failures, and the scaled-decoding figures.
    """
    report, failures = verify_end_to_end(
        {"photo_jpeg": paths},
        full_preprocess,
        training_preprocess,
        class_session,
        keras_predict,
        output_kind,
        thresholds,
    )
    names = [path.name for path in paths]
    trained = np.stack([np.asarray(training_preprocess(path), dtype=np.float32) for path in paths])
    served = np.stack([scaled_preprocess(path.read_bytes()) for path in paths]).astype(np.float32)
    trained = trained.reshape(served.shape)
    onnx_probs = probabilities(
        run_onnx(class_session, "input", [OUTPUT_NAME], served)[OUTPUT_NAME], output_kind
    )
    keras_probs = probabilities(keras_predict(trained), output_kind)
    return report["photo_jpeg"], failures, _file_figures(names, served, trained, onnx_probs, keras_probs)
