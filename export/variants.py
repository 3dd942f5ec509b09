"""Deployment variants of the float32 graph: float16 for GPUs and int8 (static QDQ) for CPUs.

Each variant is measured against float32 on the same inputs: top-1 agreement on held-out samples, accuracy
on the test split, file size and CPU throughput. Export refuses a variant that loses more accuracy than
the bound allows.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from cnnserve.export.convert import INPUT_NAME, OUTPUT_NAME
from cnnserve.export.errors import ExportError
from cnnserve.export.parity import TensorStats, Top1Stats, probabilities
from cnnserve.export.sessions import make_session
from cnnserve.export.throughput import compare_throughput

LOG = logging.getLogger(__name__)

FP16_FILENAME = "model.fp16.onnx"
INT8_FILENAME = "model.int8.onnx"


def make_fp16(source: Path, target: Path) -> None:
    """A float16 copy of the graph that keeps float32 inputs and outputs (casts at the edges)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(source))
    converted = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False)
    _sort_topologically(converted.graph)
    onnx.checker.check_model(converted, full_check=True)
    onnx.save(converted, str(target))


def _sort_topologically(graph: onnx.GraphProto) -> None:
    """Reorder nodes so each comes after its inputs' producers (the fp16 converter appends its casts)."""
    available = {value.name for value in graph.input} | {init.name for init in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        ready = [node for node in pending if all(name in available for name in node.input)]
        if not ready:
            raise ExportError("the float16 graph has a cycle or an input nobody produces")
        for node in ready:
            ordered.append(node)
            available.update(node.output)
        pending = [node for node in pending if all(node is not r for r in ready)]
    del graph.node[:]
    graph.node.extend(ordered)


class _Calibration:
    """ONNX Runtime's CalibrationDataReader protocol over an array of training samples."""

    def __init__(self, samples: np.ndarray, batch: int = 32) -> None:
        self._batches = [samples[i : i + batch] for i in range(0, len(samples), batch)]
        self._index = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._index >= len(self._batches):
            return None
        batch = self._batches[self._index]
        self._index += 1
        return {INPUT_NAME: np.ascontiguousarray(batch, dtype=np.float32)}

    def rewind(self) -> None:
        self._index = 0


def make_int8(source: Path, target: Path, calibration: np.ndarray, workdir: Path) -> None:
    """Static QDQ quantization (uint8 activations, per-channel int8 weights) calibrated on `calibration`."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if len(calibration) == 0:
        raise ExportError("int8 quantization needs calibration samples; none were loaded")
    prepared = workdir / "int8-prepared.onnx"
    quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
    quantize_static(
        str(prepared),
        str(target),
        _Calibration(calibration),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        calibrate_method=CalibrationMethod.MinMax,
    )


def _predict(session, batch_size: int, data: np.ndarray) -> np.ndarray:
    outputs = [
        session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(data[i : i + batch_size])})[0]
        for i in range(0, len(data), batch_size)
    ]
    return np.concatenate(outputs) if outputs else np.zeros((0,))


def measure_variant(
    name: str,
    fp32_path: Path,
    variant_path: Path,
    output_kind: int,
    held_out: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    max_batch: int,
    bench_batch: np.ndarray,
    timing_rounds: int = 3,
    timing_budget_s: float = 6.0,
) -> dict[str, Any]:
    """Top-1 agreement and probability error vs float32, test accuracy change, size and CPU throughput."""
    fp32 = make_session(fp32_path)
    variant = make_session(variant_path)
    ref = probabilities(_predict(fp32, max_batch, held_out), output_kind)
    got = probabilities(_predict(variant, max_batch, held_out), output_kind)
    top1, diff = Top1Stats(), TensorStats()
    top1.update(ref, got)
    diff.update(ref, got)
    fp32_acc = float(
        np.mean(np.argmax(probabilities(_predict(fp32, max_batch, test_x), output_kind), axis=1) == test_y)
    )
    variant_acc = float(
        np.mean(np.argmax(probabilities(_predict(variant, max_batch, test_x), output_kind), axis=1) == test_y)
    )
    fp32_speed, variant_speed = compare_throughput(
        fp32_path, variant_path, bench_batch, rounds=timing_rounds, budget_s=timing_budget_s
    )
    fp32_size = fp32_path.stat().st_size
    variant_size = variant_path.stat().st_size
    return {
        "file": variant_path.name,
        "top1_agreement_vs_fp32": top1.agreement,
        "max_abs_probability_difference_vs_fp32": diff.max_abs,
        "held_out_samples": len(held_out),
        "test_samples": len(test_x),
        "test_accuracy_fp32": fp32_acc,
        "test_accuracy": variant_acc,
        "accuracy_change_points": (variant_acc - fp32_acc) * 100.0,
        "size_bytes": variant_size,
        "size_bytes_fp32": fp32_size,
        "size_ratio_vs_fp32": variant_size / fp32_size,
        # Single-thread CPU time per batch (robust on a shared machine), and wall clock on all threads.
        "cpu_images_per_s": variant_speed["cpu_images_per_s"],
        "cpu_images_per_s_fp32": fp32_speed["cpu_images_per_s"],
        "cpu_throughput_ratio_vs_fp32": variant_speed["cpu_images_per_s"] / fp32_speed["cpu_images_per_s"],
        "wall_images_per_s": variant_speed["images_per_s"],
        "wall_images_per_s_fp32": fp32_speed["images_per_s"],
        "wall_throughput_ratio_vs_fp32": variant_speed["images_per_s"] / fp32_speed["images_per_s"],
        "cpu_batch": fp32_speed["batch"],
        "variant": name,
    }
