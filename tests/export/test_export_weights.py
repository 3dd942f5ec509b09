"""The layer-weights map survives tf2onnx dropping all-zero biases (a freshly built model has them)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort

from cnnserve.export.convert import OUTPUT_NAME, convert, keep_outputs
from cnnserve.export.weights import locate_layer_weights, read_kernel
from cnnserve.training.zoo import build_model


def test_zero_biases_are_restored_and_the_graph_still_computes_the_same() -> None:
    model = build_model("lenet5")  # glorot kernels, all-zero biases
    onnx_model = keep_outputs(convert(model, [OUTPUT_NAME, "conv1"]), [OUTPUT_NAME])
    found = locate_layer_weights(onnx_model, model)
    onnx.checker.check_model(onnx_model, full_check=True)
    assert [info.layer for info in found] == ["conv1", "conv2", "dense1", "dense2", "output"]
    for info in found:
        kernel, bias = read_kernel(onnx_model, info)
        expected_kernel, expected_bias = model.get_layer(info.layer).get_weights()
        np.testing.assert_array_equal(kernel, expected_kernel)
        np.testing.assert_array_equal(bias, expected_bias)
        assert info.kernel_initializer == f"{info.layer}/kernel"
        assert info.bias_initializer == f"{info.layer}/bias"
    conv = next(i for i in found if i.layer == "conv1")
    assert conv.kernel_permutation == (2, 3, 1, 0)  # ONNX (out, in, kh, kw) → Keras (kh, kw, in, out)
    # Every restored bias is used by a node (no dangling initializer for ONNX Runtime to warn about) ...
    used = {name for node in onnx_model.graph.node for name in node.input}
    assert all(info.bias_initializer in used for info in found)
    # ... and the graph computes what Keras computes.
    session = ort.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).random((3, 28, 28, 1), dtype=np.float32)
    got = session.run([OUTPUT_NAME], {"input": x})[0]
    np.testing.assert_allclose(got, np.asarray(model(x, training=False)), atol=1e-6)
