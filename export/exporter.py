"""Export one training run into the model repository, proving on the way that ONNX computes what Keras does.

`export_run` loads the run's `model.keras`, converts it (classification graph, and activation outputs in
the same graph or a second one when they would slow classification down), verifies parity on real
held-out samples, edge cases, every activation layer and real image files, builds the requested fp16/int8
variants and the Grad-CAM gradient graph, and only then publishes the version atomically. A failed check
writes its report next to the run directory and leaves the repository untouched.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from cnnserve.export import config as config_mod
from cnnserve.export.convert import (
    DEFAULT_OPSET,
    OUTPUT_NAME,
    convert,
    input_dims,
    keep_outputs,
    keras_forward,
    layer_outputs,
)
from cnnserve.export.errors import ExportError, ParityError, RunInputError, VariantRejectedError
from cnnserve.export.photos import PHOTOS, PhotosUnavailableError, write_photos
from cnnserve.export.publish import choose_version, publish_version
from cnnserve.export.sessions import make_session
from cnnserve.export.throughput import compare_throughput
from cnnserve.export.verify import (
    Thresholds,
    edge_cases,
    end_to_end_checks,
    verify_end_to_end,
    verify_graphs,
    verify_photos,
    write_image_files,
)
from cnnserve.protos import model_config_pb2

LOG = logging.getLogger(__name__)

PARITY_FILENAME = "parity.json"


@dataclass(frozen=True)
class ExportOptions:
    """Everything `cnnserve export` can change; the defaults are what the issue asks for."""

    model_name: str | None = None  # default: the run's zoo model name
    version: int | None = None  # default: the next free integer
    force: bool = False  # replace an existing version
    opset: int = DEFAULT_OPSET
    samples: int = 256  # real held-out samples for the parity check
    image_samples: int = 8  # dataset images written as PNG and as JPEG for the end-to-end check
    photo_samples: int = len(PHOTOS)  # photo-sized JPEGs from real photographs (export/photos.py); 0: none
    scaled_decoding: bool = True  # turn DCT-scaled JPEG decoding on when its parity check holds
    max_batch_size: int = 64
    max_queue_delay_microseconds: int = config_mod.DEFAULT_MAX_QUEUE_DELAY_US
    max_queue_size: int = 0  # 0: 16 full batches
    fp16: bool = False
    int8: bool = False
    accuracy_samples: int = 1000  # test-split samples for the variants' accuracy
    calibration_samples: int = 256  # training samples calibrating int8
    gradcam: bool = True
    gradcam_samples: int = 16
    activation_overhead_limit_pct: float = 3.0  # above this, activations go to a second graph
    timing_rounds: int = 3  # interleaved rounds of best-of-8 timings (overhead and variant throughput)
    timing_budget_s: float = 6.0  # stop timing after this long (at least 3 runs of each graph)
    thresholds: Thresholds = field(default_factory=Thresholds)
    seed: int = 0


@dataclass(frozen=True)
class ExportResult:
    model_name: str
    version: int
    version_dir: Path
    parity: dict[str, Any]
    config: model_config_pb2.ModelConfig
    files: tuple[str, ...]


@dataclass
class _Loaded:
    run: Any  # cnnserve.training.rundir.RunInfo
    model: Any  # keras.Model


def _load(run_dir: Path) -> _Loaded:
    from cnnserve.training.rundir import MODEL_FILE, RUN_JSON, RunDirectoryError, load_run

    if not run_dir.is_dir():
        raise RunInputError(f"run directory {run_dir} does not exist")
    missing = [name for name in (MODEL_FILE, RUN_JSON) if not (run_dir / name).is_file()]
    if missing:
        raise RunInputError(f"run directory {run_dir} has no {' and no '.join(missing)}")
    try:
        run = load_run(run_dir)
    except RunDirectoryError as error:
        raise RunInputError(str(error)) from error
    import keras

    path = run_dir / MODEL_FILE
    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as error:  # Keras raises ValueError, OSError, zipfile errors, ... for a bad file
        raise RunInputError(
            f"{path} is not a loadable Keras model (corrupt or incomplete?): {error}"
        ) from error
    return _Loaded(run=run, model=model)


def _write_failure_report(run_dir: Path, report: dict[str, Any]) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    text = json.dumps(report, indent=2, default=_json_default) + "\n"
    for folder in (run_dir, Path(tempfile.gettempdir())):
        path = folder / f"parity-failure-{stamp}.json"
        try:
            path.write_text(text, encoding="utf-8")
            return path
        except OSError:
            continue
    raise ExportError("could not write the parity failure report anywhere")


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value)}")


def _measure_overhead(
    class_path: Path, full_path: Path, batch: np.ndarray, rounds: int, budget_s: float
) -> dict[str, Any]:
    """Classification time of the plain graph vs the graph with activation outputs (CPU, best of runs)."""
    plain, full = compare_throughput(class_path, full_path, batch, rounds=rounds, budget_s=budget_s)
    return {
        "batch": int(batch.shape[0]),
        "provider": "CPUExecutionProvider",
        "measure": "least single-thread CPU time per batch (decides); best wall time with default threads",
        "class_only_cpu_ms": plain["cpu_ms_per_batch"],
        "with_activation_outputs_cpu_ms": full["cpu_ms_per_batch"],
        "overhead_pct": (full["cpu_ms_per_batch"] / plain["cpu_ms_per_batch"] - 1.0) * 100.0,
        "class_only_wall_ms": plain["best_batch_ms"],
        "with_activation_outputs_wall_ms": full["best_batch_ms"],
        "wall_overhead_pct": (full["best_batch_ms"] / plain["best_batch_ms"] - 1.0) * 100.0,
    }


def _tile(data: np.ndarray, count: int) -> np.ndarray:
    repeats = -(-count // max(len(data), 1))
    return np.ascontiguousarray(np.concatenate([data] * repeats)[:count])


def export_run(run_dir: Path, repo: Path, options: ExportOptions | None = None) -> ExportResult:
    """Convert, verify and publish one run as a new version in `repo`; raises an `ExportError` on failure."""
    options = options or ExportOptions()
    run_dir, repo = Path(run_dir), Path(repo)
    started = time.perf_counter()
    loaded = _load(run_dir)
    run, model = loaded.run, loaded.model
    from cnnserve.training import datasets

    name = options.model_name or run.model
    kind_enum = config_mod.output_kind_enum(run.output_kind)
    dims = input_dims(model)
    layers = layer_outputs(model)
    pre_proto = config_mod.preprocessing_proto(run.preprocessing.to_dict())
    max_batch = options.max_batch_size
    thresholds = options.thresholds
    LOG.info("exporting %s (%s) from %s", name, run.model, run_dir)
    # Fail fast on a version that exists (publishing checks again, atomically, at the end).
    choose_version(repo / name, options.version, options.force)

    try:
        held_x, _ = datasets.load_samples(run, run.dataset.test_split, options.samples, seed=options.seed)
    except (datasets.DatasetError, OSError, ValueError) as error:
        raise ExportError(f"run {run_dir}: cannot load held-out samples from its dataset: {error}") from error
    held_x = np.ascontiguousarray(held_x, dtype=np.float32).reshape((-1, *dims))
    if len(held_x) == 0:
        raise ExportError(f"run {run_dir}: no held-out samples could be loaded for the parity check")

    with tempfile.TemporaryDirectory(prefix="cnnserve-export-") as work_name:
        work = Path(work_name)
        import onnx

        full_model = convert(model, [OUTPUT_NAME, *(layer.name for layer in layers)], opset=options.opset)
        class_model = keep_outputs(full_model, [OUTPUT_NAME])
        class_path, full_path = work / "class.onnx", work / "full.onnx"
        onnx.save(class_model, str(class_path))
        onnx.save(full_model, str(full_path))

        bench_batch = _tile(held_x, max_batch)
        overhead = _measure_overhead(
            class_path, full_path, bench_batch, options.timing_rounds, options.timing_budget_s
        )
        separate = overhead["overhead_pct"] > options.activation_overhead_limit_pct
        overhead["limit_pct"] = options.activation_overhead_limit_pct
        overhead["separate_activations_graph"] = separate
        LOG.info(
            "activation outputs cost %.1f%% at batch %d: %s",
            overhead["overhead_pct"],
            max_batch,
            "writing a separate activations graph" if separate else "keeping them in model.onnx",
        )

        from cnnserve.export.weights import locate_layer_weights, write_weights_file

        served_model = class_model if separate else full_model
        weights = locate_layer_weights(served_model, model)
        model_path = work / config_mod.MODEL_FILENAME
        onnx.checker.check_model(served_model, full_check=True)
        onnx.save(served_model, str(model_path))
        files: dict[str, Path] = {config_mod.MODEL_FILENAME: model_path}
        if weights:
            weights_path = write_weights_file(served_model, weights, work / config_mod.WEIGHTS_FILENAME)
            files[config_mod.WEIGHTS_FILENAME] = weights_path
        activations_filename = ""
        if separate:
            activations_path = work / config_mod.ACTIVATIONS_FILENAME
            onnx.save(full_model, str(activations_path))
            files[config_mod.ACTIVATIONS_FILENAME] = activations_path
            activations_filename = config_mod.ACTIVATIONS_FILENAME

        class_session = make_session(model_path)
        activation_session = make_session(files[activations_filename]) if separate else class_session
        forward = keras_forward(model, [OUTPUT_NAME, *(layer.name for layer in layers)])
        cases = {"held_out": held_x, **edge_cases(held_x, dims, pre_proto.scale, pre_proto.offset, max_batch)}
        graphs_report, failures = verify_graphs(
            forward, class_session, activation_session, layers, kind_enum, cases, max_batch, thresholds
        )

        from cnnserve.serving.model.preprocessing import PreprocessSpec, preprocess_encoded

        spec = PreprocessSpec.from_config(pre_proto, dims)
        raw_images, _ = datasets.load_raw_samples(
            run, run.dataset.test_split, options.image_samples, seed=options.seed
        )
        image_paths = write_image_files(raw_images, work / "images", (pre_proto.height, pre_proto.width))
        predict = keras_forward(model, [OUTPUT_NAME])
        end_to_end, end_to_end_failures = verify_end_to_end(
            end_to_end_checks(image_paths),
            lambda data: preprocess_encoded(data, spec),
            lambda path: datasets.load_image_for_training(path, run),
            class_session,
            lambda batch: predict(batch)[OUTPUT_NAME],
            kind_enum,
            thresholds,
        )
        failures.extend(end_to_end_failures)
        photos, photo_failures, scaled = _verify_photos(
            options,
            work / "photos",
            spec,
            lambda path: datasets.load_image_for_training(path, run),
            class_session,
            lambda batch: predict(batch)[OUTPUT_NAME],
            kind_enum,
        )
        if photos is not None:
            end_to_end["photo_jpeg"] = photos
        failures.extend(photo_failures)
        pre_proto.scaled_decoding = bool(scaled["enabled"])
        LOG.info("scaled JPEG decoding %s", _scaled_summary(scaled))

        parity: dict[str, Any] = {
            "model": name,
            "zoo_model": run.model,
            "run_dir": str(run_dir.resolve()),
            "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "versions": _versions(),
            "opset": options.opset,
            "thresholds": thresholds.to_dict(),
            "held_out": {
                "split": run.dataset.test_split,
                "dataset": run.dataset.kind,
                "samples": len(held_x),
                "seed": options.seed,
            },
            "output": graphs_report["held_out"]["output"],
            "activations": graphs_report.pop("layers"),
            "cases": graphs_report,
            "end_to_end": {
                "image_size": _e2e_size(pre_proto),
                **end_to_end,
            },
            "scaled_decoding": scaled,
            "activation_outputs": overhead,
        }
        if failures:
            parity["passed"] = False
            parity["failures"] = failures
            path = _write_failure_report(run_dir, parity)
            raise ParityError(
                f"parity check failed for {name} ({len(failures)} problems; report kept at {path}): "
                + "; ".join(failures[:3]),
                str(path),
            )

        variants: dict[str, Any] = {}
        if options.fp16 or options.int8:
            variants = _build_variants(
                options, run, model_path, work, held_x, bench_batch, kind_enum, dims, files
            )
            rejected = [
                f"{key}: test accuracy changes by {value['accuracy_change_points']:+.2f} points "
                f"({value['test_accuracy_fp32']:.4f} → {value['test_accuracy']:.4f}), beyond the bound of "
                f"-{thresholds.max_accuracy_drop:g}"
                for key, value in variants.items()
                if -value["accuracy_change_points"] > thresholds.max_accuracy_drop
            ]
            parity["variants"] = variants
            if rejected:
                parity["passed"] = False
                parity["failures"] = rejected
                path = _write_failure_report(run_dir, parity)
                raise VariantRejectedError(
                    f"refusing variant(s) of {name}: " + "; ".join(rejected) + f" (report kept at {path})",
                    str(path),
                )

        gradcam_proto = model_config_pb2.GradCam()
        if options.gradcam:
            from cnnserve.export import gradcam

            gradcam_proto, gradcam_report, gradcam_file = gradcam.export_gradcam(
                model, run, work, held_x[: options.gradcam_samples], kind_enum, options.opset, thresholds
            )
            parity["gradcam"] = gradcam_report
            if gradcam_file is not None:
                files[gradcam_proto.filename] = gradcam_file
        else:
            gradcam_proto.unavailable_reason = "not exported (gradcam disabled at export)"

        output_dims = [int(d) for d in model.outputs[0].shape[1:]] if hasattr(model, "outputs") else []
        model_config = config_mod.build_config(
            name=name,
            zoo_model=run.model,
            input_dims=dims,
            output_dims=output_dims or [run.num_classes],
            output_kind=run.output_kind,
            num_classes=run.num_classes,
            preprocessing=pre_proto,
            layers=layers,
            weights=weights,
            batching=config_mod.BatchingSettings(
                max_batch_size=max_batch,
                max_queue_delay_microseconds=options.max_queue_delay_microseconds,
                max_queue_size=options.max_queue_size,
            ),
            activations_filename=activations_filename,
            gradcam=gradcam_proto,
        )
        parity["files"] = {name_: path.stat().st_size for name_, path in files.items()}
        parity["passed"] = True
        parity["export_seconds"] = round(time.perf_counter() - started, 2)
        parity_path = work / PARITY_FILENAME
        parity_path.write_text(json.dumps(parity, indent=2, default=_json_default) + "\n", encoding="utf-8")
        files[PARITY_FILENAME] = parity_path
        version, version_dir = publish_version(
            repo, model_config, run.labels, files, version=options.version, force=options.force
        )
    parity["version"] = version
    return ExportResult(
        model_name=name,
        version=version,
        version_dir=version_dir,
        parity=parity,
        config=model_config,
        files=tuple(sorted(files)),
    )


def _verify_photos(
    options: ExportOptions,
    folder: Path,
    spec: Any,  # cnnserve.serving.model.preprocessing.PreprocessSpec
    training_preprocess: Any,
    class_session: Any,
    keras_predict: Any,
    kind_enum: int,
) -> tuple[dict[str, Any] | None, list[str], dict[str, Any]]:
    """The photo check set through serving (full and DCT-scaled decoding) against training + Keras.

    Returns the full-decoding report entry (the `photo_jpeg` check, gated like every end-to-end check; None
    without photos), its failures, and the scaled-decoding record: its figures, the bounds, and whether it
    is on and why.
    """
    from dataclasses import replace

    from cnnserve.serving.model.decoding import dct_scale
    from cnnserve.serving.model.preprocessing import preprocess_encoded

    bounds = {
        "min_top1_agreement": options.thresholds.scaled_decoding_min_top1_agreement,
        "max_abs_probability_difference": options.thresholds.scaled_decoding_max_abs_probability_difference,
    }
    record: dict[str, Any] = {"enabled": False, "bounds": bounds}
    chosen = PHOTOS[: max(0, options.photo_samples)]
    if not chosen:
        record["reason"] = "no photo check set (photo_samples 0)"
        return None, [], record
    try:
        paths = write_photos(folder, chosen, seed=options.seed)
    except PhotosUnavailableError as error:
        record["reason"] = f"no photo check set: {error}"
        return None, [], record
    full_spec = replace(spec, scaled_decoding=False)
    scaled_spec = replace(spec, scaled_decoding=True)
    min_size = scaled_spec.min_decoded_size
    full, full_failures, scaled = verify_photos(
        paths,
        lambda data: preprocess_encoded(data, full_spec),
        lambda data: preprocess_encoded(data, scaled_spec),
        training_preprocess,
        class_session,
        keras_predict,
        kind_enum,
        options.thresholds,
    )
    record["photos"] = [
        {
            "file": path.name,
            "size": list(photo.size),
            "variant": photo.variant,
            "dct_scale": dct_scale(*_stored_size(photo), min_size),
        }
        for photo, path in zip(chosen, paths, strict=True)
    ]
    record.update(scaled)
    failures = options.thresholds.scaled_decoding_failures(scaled)
    if failures:
        record["reason"] = "parity outside the bounds: " + "; ".join(failures)
    elif not options.scaled_decoding:
        record["reason"] = "parity held, but scaled decoding was turned off at export"
    else:
        record["enabled"] = True
        record["reason"] = "parity held within the bounds"
    return full, full_failures, record


def _stored_size(photo: Any) -> tuple[int, int]:
    """A check-set photo's pixel size as stored (an EXIF-rotated one is stored turned)."""
    width, height = photo.size
    return (height, width) if photo.variant == "exif-rotated" else (width, height)


def _scaled_summary(record: dict[str, Any]) -> str:
    state = "on" if record["enabled"] else "off"
    if "top1_agreement" not in record:
        return f"{state}: {record['reason']}"
    return (
        f"{state}: {record['reason']} (photos {record['images']}, top-1 agreement "
        f"{record['top1_agreement']:.2%}, max abs probability difference "
        f"{record['max_abs_probability_difference']:.2e})"
    )


def _e2e_size(pre: model_config_pb2.Preprocessing) -> list[int]:
    return [pre.width * 3 // 2 + 1, pre.height * 3 // 2 + 1]


def _versions() -> dict[str, str]:
    import keras
    import onnx
    import onnxruntime
    import tensorflow as tf
    import tf2onnx

    return {
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "tf2onnx": tf2onnx.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def _build_variants(
    options: ExportOptions,
    run: Any,
    model_path: Path,
    work: Path,
    held_x: np.ndarray,
    bench_batch: np.ndarray,
    kind_enum: int,
    dims: tuple[int, ...],
    files: dict[str, Path],
) -> dict[str, Any]:
    from cnnserve.export import variants
    from cnnserve.training import datasets

    test_x, test_y = datasets.load_samples(
        run, run.dataset.test_split, options.accuracy_samples, seed=options.seed + 1
    )
    test_x = np.ascontiguousarray(test_x, dtype=np.float32).reshape((-1, *dims))
    test_y = np.asarray(test_y).astype(np.int64).reshape(-1)
    results: dict[str, Any] = {}

    def measure(name: str, path: Path) -> dict[str, Any]:
        return variants.measure_variant(
            name,
            model_path,
            path,
            kind_enum,
            held_x,
            test_x,
            test_y,
            options.max_batch_size,
            bench_batch,
            options.timing_rounds,
            options.timing_budget_s,
        )

    if options.fp16:
        path = work / variants.FP16_FILENAME
        variants.make_fp16(model_path, path)
        results["fp16"] = measure("fp16", path)
        files[variants.FP16_FILENAME] = path
    if options.int8:
        calibration, _ = datasets.load_samples(run, "train", options.calibration_samples, seed=options.seed)
        calibration = np.ascontiguousarray(calibration, dtype=np.float32).reshape((-1, *dims))
        path = work / variants.INT8_FILENAME
        variants.make_int8(model_path, path, calibration, work)
        results["int8"] = measure("int8", path)
        results["int8"]["calibration_samples"] = len(calibration)
        files[variants.INT8_FILENAME] = path
    return results


__all__ = ["ExportOptions", "ExportResult", "export_run", "os"]
