"""Tiny real ONNX graphs for the parity checks' own tests: a 6×6 greyscale classifier with a dense layer.

The parity checks compare two forward passes; their tests need real ONNX Runtime sessions but not a
trained network, and building one here (no TensorFlow) keeps them fast enough to run under mutation
testing. The "reference" forward pass the checks compare against is the same graph run again, so every
difference a test sees is one it put there itself.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from cnnserve.export.convert import OUTPUT_NAME, LayerOutput
from cnnserve.export.parity import run_onnx
from cnnserve.export.sessions import make_session

SIDE = 6
CLASSES = 3
DENSE = LayerOutput(name="dense", kind="dense", dims=(CLASSES,))


def classifier(path: Path, seed: int = 0, bias_shift: float = 0.0, head: str = "softmax") -> Path:
    """input (N, 6, 6, 1) → flatten → dense (logits, an activation output) → softmax (or none) → output."""
    rng = np.random.default_rng(seed)
    weights = rng.normal(0.0, 1.0, (SIDE * SIDE, CLASSES)).astype(np.float32)
    bias = rng.normal(0.0, 0.1, CLASSES).astype(np.float32)
    bias[0] += np.float32(bias_shift)  # on one class only: a shift of every class leaves softmax as it is
    graph = helper.make_graph(
        [
            helper.make_node("Reshape", ["input", "flat_shape"], ["flat"]),
            helper.make_node("MatMul", ["flat", "weights"], ["matmul"]),
            helper.make_node("Add", ["matmul", "bias"], [DENSE.output_name]),
            helper.make_node("Softmax", [DENSE.output_name], [OUTPUT_NAME], axis=1)
            if head == "softmax"
            else helper.make_node("Identity", [DENSE.output_name], [OUTPUT_NAME]),
        ],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", SIDE, SIDE, 1])],
        [
            helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", CLASSES]),
            helper.make_tensor_value_info(DENSE.output_name, TensorProto.FLOAT, ["N", CLASSES]),
        ],
        [
            numpy_helper.from_array(np.array([-1, SIDE * SIDE], dtype=np.int64), "flat_shape"),
            numpy_helper.from_array(weights, "weights"),
            numpy_helper.from_array(bias, "bias"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


class Reference:
    """A forward pass standing in for Keras: the graph run again, with differences a test adds on purpose.

    `shift(image, name, column, value)` adds `value` to one number of output `name` wherever the input row
    is exactly `image`, so the test knows which sample of every case carries the difference.
    """

    def __init__(self, session) -> None:
        self.session = session
        self.shifts: list[tuple[np.ndarray, str, int, float]] = []

    def shift(self, image: np.ndarray, name: str, column: int, value: float) -> None:
        self.shifts.append((np.asarray(image, dtype=np.float32), name, column, value))

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        outputs = run_onnx(self.session, "input", [OUTPUT_NAME, DENSE.output_name], batch)
        for image, name, column, value in self.shifts:
            for row in np.flatnonzero([np.array_equal(sample, image) for sample in batch]):
                outputs[name][row, column] += np.float32(value)
        return outputs


def session(path: Path):
    return make_session(path)
