"""Where each Conv and Dense layer's weights live in the ONNX graph, so serving can read them without TF.

tf2onnx names initializers after TensorFlow ops (`functional_1/conv1_1/convolution/ReadVariableOp:0`),
transposes convolution kernels to ONNX's (out, in, kh, kw) layout and drops biases that are all zero. So
kernels are found by value (under every axis permutation), renamed to `<layer>/kernel` and `<layer>/bias`,
and a dropped bias is put back as the Conv's bias input or an Add after the MatMul, which computes the same.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from cnnserve.export.errors import ConversionError


@dataclass(frozen=True)
class LayerWeightsInfo:
    layer: str
    kind: str  # conv or dense
    kernel_initializer: str
    bias_initializer: str
    kernel_permutation: tuple[int, ...]  # ONNX initializer axes → Keras kernel layout
    kernel_shape: tuple[int, ...]


def _rename_initializer(graph: onnx.GraphProto, old: str, new: str) -> None:
    if old == new:
        return
    if any(init.name == new for init in graph.initializer):
        raise ConversionError(f"cannot rename initializer {old!r}: {new!r} already exists")
    for init in graph.initializer:
        if init.name == old:
            init.name = new
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
    for value in graph.input:
        if value.name == old:
            value.name = new


def _matching_permutation(array: np.ndarray, kernel: np.ndarray) -> tuple[int, ...] | None:
    if array.size != kernel.size or array.ndim != kernel.ndim:
        return None
    for perm in itertools.permutations(range(array.ndim)):
        candidate = np.transpose(array, perm)
        if candidate.shape == kernel.shape and np.array_equal(candidate, kernel):
            return tuple(perm)
    return None


def _consumers(graph: onnx.GraphProto, tensor: str) -> list[onnx.NodeProto]:
    return [node for node in graph.node if tensor in node.input]


def _attach_bias(graph: onnx.GraphProto, kernel_name: str, bias_name: str, layer: str) -> None:
    """Make a restored zero bias part of the computation (Conv's B input, or an Add after MatMul)."""
    for node in _consumers(graph, kernel_name):
        if node.op_type == "Conv" and len(node.input) == 2:
            node.input.append(bias_name)
            return
        if node.op_type == "Gemm" and len(node.input) == 2:
            node.input.append(bias_name)
            return
        if node.op_type == "MatMul":
            product = node.output[0]
            node.output[0] = f"{product}__nobias"
            add = helper.make_node("Add", [node.output[0], bias_name], [product], name=f"{layer}/BiasAdd")
            index = list(graph.node).index(node)
            graph.node.insert(index + 1, add)
            return
    raise ConversionError(f"layer {layer!r}: no Conv/Gemm/MatMul node uses its kernel {kernel_name!r}")


def _structural_bias(graph: onnx.GraphProto, kernel_name: str, initializers: dict[str, np.ndarray]) -> str:
    """The bias tensor the node using the kernel adds: Conv/Gemm input 2, or the Add after a MatMul."""
    for node in _consumers(graph, kernel_name):
        if node.op_type in ("Conv", "Gemm") and len(node.input) > 2 and node.input[2] in initializers:
            return node.input[2]
        if node.op_type == "MatMul":
            for after in _consumers(graph, node.output[0]):
                if after.op_type == "Add":
                    for name in after.input:
                        if name in initializers:
                            return name
    return ""


def locate_layer_weights(onnx_model: onnx.ModelProto, keras_model) -> list[LayerWeightsInfo]:
    """Find, rename (in place) and describe every Conv and Dense layer's kernel and bias initializers."""
    graph = onnx_model.graph
    found: list[LayerWeightsInfo] = []
    for layer in keras_model.layers:
        class_name = type(layer).__name__
        if class_name not in ("Conv2D", "Dense"):
            continue
        kind = "conv" if class_name == "Conv2D" else "dense"
        weights = layer.get_weights()
        kernel = np.asarray(weights[0], dtype=np.float32)
        bias = np.asarray(weights[1], dtype=np.float32) if len(weights) > 1 else None
        initializers = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
        kernel_name, permutation = "", None
        for name, array in initializers.items():
            permutation = _matching_permutation(array, kernel)
            if permutation is not None:
                kernel_name = name
                break
        if permutation is None:
            raise ConversionError(
                f"layer {layer.name!r}: no ONNX initializer holds its kernel of shape {kernel.shape}"
            )
        new_kernel = f"{layer.name}/kernel"
        _rename_initializer(graph, kernel_name, new_kernel)
        bias_name = ""
        if bias is not None:
            initializers = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
            candidate = _structural_bias(graph, new_kernel, initializers)
            if not candidate or not np.array_equal(initializers[candidate].reshape(-1), bias):
                candidate = next(
                    (
                        name
                        for name, array in initializers.items()
                        if array.size == bias.size
                        and np.array_equal(array.reshape(-1), bias)
                        and _consumers(graph, name)
                        and not name.endswith("/kernel")
                        and array.ndim == 1
                        and not any(info.bias_initializer == name for info in found)
                    ),
                    "",
                )
                # A value match on an unrelated constant is only trusted for non-trivial biases.
                if candidate and not np.any(bias):
                    candidate = ""
            bias_name = f"{layer.name}/bias"
            if candidate:
                _rename_initializer(graph, candidate, bias_name)
            else:
                graph.initializer.append(numpy_helper.from_array(bias, bias_name))
                _attach_bias(graph, new_kernel, bias_name, layer.name)
        found.append(
            LayerWeightsInfo(
                layer=layer.name,
                kind=kind,
                kernel_initializer=new_kernel,
                bias_initializer=bias_name,
                kernel_permutation=permutation,
                kernel_shape=tuple(int(d) for d in kernel.shape),
            )
        )
    return found


def write_weights_file(onnx_model: onnx.ModelProto, found: list[LayerWeightsInfo], path: Path) -> Path:
    """Every layer's Keras-layout kernel and bias, read from the served graph, as the `.npz` that serving's
    GetFilters reads (`<layer>/kernel`, `<layer>/bias`; a layer without bias has no bias array)."""
    arrays: dict[str, np.ndarray] = {}
    for info in found:
        kernel, bias = read_kernel(onnx_model, info)
        arrays[f"{info.layer}/kernel"] = np.ascontiguousarray(kernel, dtype=np.float32)
        if bias is not None:
            arrays[f"{info.layer}/bias"] = np.ascontiguousarray(bias.reshape(-1), dtype=np.float32)
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)  # type: ignore[arg-type]  # numpy's stubs type **kwds as allow_pickle
    return path


def read_kernel(onnx_model: onnx.ModelProto, info: LayerWeightsInfo) -> tuple[np.ndarray, np.ndarray | None]:
    """The Keras-layout kernel and the bias of a layer, read from the ONNX graph as serving would."""
    arrays = {init.name: init for init in onnx_model.graph.initializer}
    kernel = np.transpose(numpy_helper.to_array(arrays[info.kernel_initializer]), info.kernel_permutation)
    bias = numpy_helper.to_array(arrays[info.bias_initializer]) if info.bias_initializer else None
    return kernel, bias
