"""Keras → ONNX with tf2onnx: our own input/output names, a dynamic batch dimension, activation outputs.

`tf2onnx.convert.from_keras` does not work with Keras 3, so the model is wrapped in a `tf.function` with an
explicit input signature whose dictionary outputs become the graph's named outputs. tf2onnx does not fail on
an op it cannot convert (it leaves the TensorFlow op in the graph and logs it), so those log records are
collected and turned into a `ConversionError` naming the Keras layer and the op.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from cnnserve.export.errors import ConversionError

LOG = logging.getLogger(__name__)

INPUT_NAME = "input"
OUTPUT_NAME = "output"
DEFAULT_OPSET = 17

# Keras layer class → the kind recorded in the config; only these become activation outputs.
_LAYER_KINDS: dict[str, str] = {
    "Conv2D": "conv",
    "Conv1D": "conv",
    "DepthwiseConv2D": "conv",
    "SeparableConv2D": "conv",
    "MaxPooling2D": "pool",
    "AveragePooling2D": "pool",
    "MaxPooling1D": "pool",
    "AveragePooling1D": "pool",
    "GlobalAveragePooling2D": "pool",
    "GlobalMaxPooling2D": "pool",
    "Dense": "dense",
    "Flatten": "flatten",
    "Dropout": "dropout",
}
_UNSUPPORTED = re.compile(r"Tensorflow op \[(?P<node>[^:\]]+): (?P<op>[^\]]+)\] is not supported")


@dataclass(frozen=True)
class LayerOutput:
    """A Keras layer whose activations are an extra graph output."""

    name: str
    kind: str
    dims: tuple[int, ...]  # without the batch dimension

    @property
    def output_name(self) -> str:
        return self.name


def functional(model):  # keras types stay out of the signatures
    """The model as a functional graph with `inputs`; a Sequential never called has none yet."""
    import keras

    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        inputs = None
    if inputs:
        return model
    shape = model.input_shape if hasattr(model, "input_shape") else None
    if shape is None:
        raise ConversionError(f"model {model.name!r} has no defined input shape")
    inputs = keras.Input(shape[1:], name=INPUT_NAME)
    return keras.Model(inputs, model(inputs), name=model.name)


def input_dims(model) -> tuple[int, ...]:
    shape = tuple(functional(model).inputs[0].shape[1:])
    if any(d is None for d in shape):
        raise ConversionError(f"model {model.name!r} has a non-static input shape {shape}")
    return tuple(int(d) for d in shape)


def layer_outputs(model) -> list[LayerOutput]:
    """Every named Conv, Pool, Dense, Flatten and Dropout layer, in graph order, with its output shape."""
    model = functional(model)
    found = []
    for layer in model.layers:
        kind = _LAYER_KINDS.get(type(layer).__name__)
        if kind is None:
            continue
        shape = tuple(layer.output.shape[1:])
        if any(d is None for d in shape):
            raise ConversionError(f"layer {layer.name!r} has a non-static output shape {shape}")
        found.append(LayerOutput(layer.name, kind, tuple(int(d) for d in shape)))
    return found


class _CollectUnsupported(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.ops: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        match = _UNSUPPORTED.search(record.getMessage())
        if match:
            self.ops.append((match["node"], match["op"]))


def keras_layer_of(node_name: str, layer_names: Sequence[str]) -> str | None:
    """The Keras layer a TensorFlow node belongs to, from its scoped name (`functional_1/conv1_2/Relu`)."""
    names = set(layer_names)
    for part in node_name.split("/"):
        candidate = part
        while candidate:
            if candidate in names:
                return candidate
            stripped = re.sub(r"_\d+$", "", candidate)
            if stripped == candidate:
                break
            candidate = stripped
    return None


@contextlib.contextmanager
def quiet_tf2onnx() -> Iterator[_CollectUnsupported]:
    """Silence tf2onnx's INFO chatter and collect the ops it reports as unsupported."""
    collector = _CollectUnsupported()
    logger = logging.getLogger("tf2onnx")
    previous_level = logger.level
    logger.addHandler(collector)
    logger.setLevel(logging.ERROR)
    try:
        yield collector
    finally:
        logger.removeHandler(collector)
        logger.setLevel(previous_level)


def convert(model, outputs: Sequence[str], opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """Convert `model` to ONNX with input `input` and one output per name in `outputs`.

    A name is a Keras layer name; `OUTPUT_NAME` means the model's classification output. The batch
    dimension stays dynamic. Raises `ConversionError` naming the layer and op tf2onnx cannot convert.
    """
    import tensorflow as tf
    import tf2onnx
    from keras import Model

    model = functional(model)
    tensors = {}
    for name in outputs:
        tensors[name] = model.outputs[0] if name == OUTPUT_NAME else model.get_layer(name).output
    graph_model = Model(model.inputs[0], tensors, name=f"{model.name}_export")
    dims = input_dims(model)
    signature = [tf.TensorSpec([None, *dims], tf.float32, name=INPUT_NAME)]

    @tf.function(input_signature=signature)
    def forward(x):
        result = graph_model(x, training=False)
        return {key: tf.identity(value, name=key) for key, value in result.items()}

    with quiet_tf2onnx() as collector:
        try:
            onnx_model, _ = tf2onnx.convert.from_function(forward, input_signature=signature, opset=opset)
        except Exception as error:  # tf2onnx raises many types; name the model and keep the cause
            raise ConversionError(f"tf2onnx failed on model {model.name!r}: {error}") from error
    layer_names = [layer.name for layer in model.layers]
    unknown = [node for node in onnx_model.graph.node if not onnx.defs.has(node.op_type, node.domain or "")]
    if collector.ops or unknown:
        problems = list(collector.ops) or [(node.name, node.op_type) for node in unknown]
        described = []
        for node_name, op in problems:
            layer = keras_layer_of(node_name, layer_names)
            where = f"layer {layer!r}" if layer else f"node {node_name!r}"
            described.append(f"{where}: TensorFlow op {op!r}")
        raise ConversionError(
            f"tf2onnx {tf2onnx.__version__} cannot convert model {model.name!r}: " + "; ".join(described)
        )
    onnx_model.graph.name = model.name
    onnx_model.producer_name = "cnnserve"
    try:
        onnx.checker.check_model(onnx_model, full_check=True)
    except onnx.checker.ValidationError as error:
        raise ConversionError(f"the ONNX graph of model {model.name!r} is not valid: {error}") from error
    return onnx_model


def keep_outputs(onnx_model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """A copy of the graph with only the named outputs, re-optimised by tf2onnx's optimizer.

    Cheaper than a second conversion, and the result is the same graph: the transposes that only served
    the dropped NHWC activation outputs cancel out again.
    """
    from tf2onnx.graph import GraphUtil

    pruned = onnx.ModelProto()
    pruned.CopyFrom(onnx_model)
    kept = [output for output in pruned.graph.output if output.name in names]
    del pruned.graph.output[:]
    pruned.graph.output.extend(kept)
    with quiet_tf2onnx():
        optimized = GraphUtil.optimize_model_proto(pruned, catch_errors=False)
    optimized.graph.name = onnx_model.graph.name
    optimized.producer_name = onnx_model.producer_name
    onnx.checker.check_model(optimized, full_check=True)
    return optimized


def keras_forward(model, outputs: Sequence[str]):
    """A callable batch → {name: numpy array} running Keras in inference mode, for parity checks."""
    from keras import Model

    model = functional(model)
    tensors = {
        name: model.outputs[0] if name == OUTPUT_NAME else model.get_layer(name).output for name in outputs
    }
    graph_model = Model(model.inputs[0], tensors)

    def run(batch: np.ndarray) -> dict[str, np.ndarray]:
        result = graph_model(batch, training=False)
        return {key: np.asarray(value) for key, value in result.items()}

    return run
