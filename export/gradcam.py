"""The Grad-CAM gradient graph: image + target class → last conv activations, d(score)/d(activations), score.

A `tf.GradientTape` graph holds `ReluGrad` and `MaxPoolGrad`, which tf2onnx 1.17 cannot convert, so the
backward pass of the head (the layers after the last convolution) is written here with forward ops only:
a ReLU's derivative is a comparison mask, a Dense layer's is a matmul with the transposed kernel, a max
pool's routes each gradient to the first maximum of its window (argmax + one-hot, as TensorFlow's
MaxPoolGrad does), Flatten is a reshape and Dropout is the identity at inference.

The score is the target class's pre-activation score (the logit, as in the Grad-CAM paper): `z[c]` for
softmax and logits heads; for a single sigmoid `z` for class 1 and `-z` for class 0 (the log-odds of each).
Parity is measured against TensorFlow's own `GradientTape` Grad-CAM on real held-out samples.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cnnserve.export.convert import INPUT_NAME, functional, input_dims, quiet_tf2onnx
from cnnserve.export.errors import ConversionError
from cnnserve.export.sessions import make_session
from cnnserve.protos import model_config_pb2

LOG = logging.getLogger(__name__)

GRADCAM_FILENAME = "gradcam.onnx"
TARGET_NAME = "target"
ACTIVATIONS_NAME = "activations"
GRADIENTS_NAME = "gradients"
SCORE_NAME = "score"

_HIDDEN_ACTIVATIONS = ("relu", "linear", "sigmoid", "tanh")


class GradCamUnavailable(Exception):
    """The model's gradient graph cannot be built; the message says which layer or op and why."""


@dataclass(frozen=True)
class _Head:
    conv_layer: Any
    layers: tuple[Any, ...]  # the layers after the last convolution, in order


def _activation_name(layer) -> str:
    activation = getattr(layer, "activation", None)
    return getattr(activation, "__name__", str(activation)) if activation is not None else "linear"


def find_head(model) -> _Head:
    """The last Conv2D and the chain of layers after it; `GradCamUnavailable` when not a plain chain."""
    import keras

    if not isinstance(model, keras.Sequential):
        raise GradCamUnavailable(
            f"model {model.name!r} is not a Sequential chain of layers; only chains are supported"
        )
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    conv_indices = [i for i, layer in enumerate(layers) if type(layer).__name__ == "Conv2D"]
    if not conv_indices:
        raise GradCamUnavailable(f"model {model.name!r} has no convolution layer (Grad-CAM needs one)")
    last = conv_indices[-1]
    head = tuple(layers[last + 1 :])
    for layer in head:
        kind = type(layer).__name__
        if kind == "MaxPooling2D":
            if tuple(layer.pool_size) != tuple(layer.strides):
                raise GradCamUnavailable(
                    f"layer {layer.name!r}: MaxPooling2D with pool {layer.pool_size} != strides "
                    f"{layer.strides} has no gradient written here"
                )
        elif kind == "Dense":
            if layer is not head[-1] and _activation_name(layer) not in _HIDDEN_ACTIVATIONS:
                raise GradCamUnavailable(
                    f"layer {layer.name!r}: activation {_activation_name(layer)!r} "
                    "has no gradient written here"
                )
        elif kind not in ("Flatten", "Dropout"):
            raise GradCamUnavailable(f"layer {layer.name!r}: {kind} has no gradient written here")
    if not head or type(head[-1]).__name__ != "Dense":
        raise GradCamUnavailable(f"model {model.name!r} does not end in a Dense layer")
    if _activation_name(head[-1]) not in ("softmax", "linear", "sigmoid"):
        raise GradCamUnavailable(
            f"layer {head[-1].name!r}: output activation {_activation_name(head[-1])!r} is not "
            "softmax, linear (logits) or sigmoid"
        )
    return _Head(conv_layer=layers[last], layers=head)


def _pool_backward(tf, x, y, grad, pool: int, padding: str):
    """MaxPool gradient with forward ops: each window's gradient goes to its first maximum."""
    shape = tf.shape(x)
    height, width = x.shape[1], x.shape[2]
    out_h, out_w = y.shape[1], y.shape[2]
    channels = x.shape[3]
    span_h, span_w = out_h * pool, out_w * pool
    if padding == "same":
        padded = tf.pad(
            x, [[0, 0], [0, span_h - height], [0, span_w - width], [0, 0]], constant_values=-3.0e38
        )
    else:
        padded = x[:, :span_h, :span_w, :]
    windows = tf.reshape(padded, [shape[0], out_h, pool, out_w, pool, channels])
    windows = tf.transpose(windows, [0, 1, 3, 5, 2, 4])
    windows = tf.reshape(windows, [shape[0], out_h, out_w, channels, pool * pool])
    first_max = tf.one_hot(tf.argmax(windows, axis=-1), pool * pool, dtype=x.dtype)
    routed = first_max * tf.expand_dims(grad, -1)
    routed = tf.reshape(routed, [shape[0], out_h, out_w, channels, pool, pool])
    routed = tf.transpose(routed, [0, 1, 4, 2, 5, 3])
    routed = tf.reshape(routed, [shape[0], span_h, span_w, channels])
    if padding == "same":
        return routed[:, :height, :width, :]
    return tf.pad(routed, [[0, 0], [0, height - span_h], [0, width - span_w], [0, 0]])


def _gradient_function(model, head: _Head, output_kind: int):
    """A tf.function (image, target) → {activations, gradients, score} using forward ops only."""
    import tensorflow as tf
    from keras import Model

    model = functional(model)
    conv_model = Model(model.inputs[0], head.conv_layer.output)
    dims = input_dims(model)
    weights = {
        layer.name: [np.asarray(w, dtype=np.float32) for w in layer.get_weights()]
        for layer in head.layers
        if type(layer).__name__ == "Dense"
    }

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, *dims], tf.float32, name=INPUT_NAME),
            tf.TensorSpec([None], tf.int64, name=TARGET_NAME),
        ]
    )
    def gradients(image, target):
        activations = conv_model(image, training=False)
        # One constant per weight, shared by the forward and the backward pass (the graph stores it once).
        constants = {name: [tf.constant(w) for w in arrays] for name, arrays in weights.items()}
        # Forward through the head, keeping what the backward pass needs.
        tape: list[tuple[Any, Any, Any]] = []  # (layer, input, pre-activation or output)
        x = activations
        for layer in head.layers:
            kind = type(layer).__name__
            if kind == "MaxPooling2D":
                y = tf.nn.max_pool2d(x, layer.pool_size, layer.strides, layer.padding.upper())
                tape.append((layer, x, y))
                x = y
            elif kind == "Flatten":
                tape.append((layer, x, None))
                x = tf.reshape(x, [tf.shape(x)[0], -1])
            elif kind == "Dropout":
                continue
            else:  # Dense
                kernel, *bias = constants[layer.name]
                z = tf.matmul(x, kernel) + (bias[0] if bias else 0.0)
                tape.append((layer, x, z))
                x = z if layer is head.layers[-1] else _apply(tf, _activation_name(layer), z)
        logits = x
        if output_kind == model_config_pb2.SIGMOID:
            sign = tf.cast(2 * target - 1, tf.float32)[:, None]
            grad = sign * tf.ones_like(logits)
            score = tf.reduce_sum(logits * sign, axis=1)
        else:
            grad = tf.one_hot(target, logits.shape[-1], dtype=tf.float32)
            score = tf.reduce_sum(logits * grad, axis=1)
        # Backward, with forward ops only.
        for index, (layer, x_in, saved) in enumerate(reversed(tape)):
            kind = type(layer).__name__
            if kind == "Dense":
                if index > 0:  # hidden layer: through its activation first
                    grad = grad * _derivative(tf, _activation_name(layer), saved)
                # grad · Wᵀ computed as (W · gradᵀ)ᵀ: transposing the small gradient instead of the
                # kernel keeps tf2onnx from folding a second, transposed copy of W into the graph.
                grad = tf.transpose(tf.matmul(constants[layer.name][0], grad, transpose_b=True))
            elif kind == "Flatten":
                grad = tf.reshape(grad, tf.shape(x_in))
            else:  # MaxPooling2D
                grad = _pool_backward(tf, x_in, saved, grad, int(layer.pool_size[0]), layer.padding)
        return {
            ACTIVATIONS_NAME: tf.identity(activations, name=ACTIVATIONS_NAME),
            GRADIENTS_NAME: tf.identity(grad, name=GRADIENTS_NAME),
            SCORE_NAME: tf.identity(score, name=SCORE_NAME),
        }

    return gradients


def _apply(tf, name: str, z):
    if name == "relu":
        return tf.nn.relu(z)
    if name == "sigmoid":
        return tf.sigmoid(z)
    if name == "tanh":
        return tf.tanh(z)
    return z


def _derivative(tf, name: str, z):
    if name == "relu":
        return tf.cast(z > 0, z.dtype)
    if name == "sigmoid":
        s = tf.sigmoid(z)
        return s * (1.0 - s)
    if name == "tanh":
        t = tf.tanh(z)
        return 1.0 - t * t
    return tf.ones_like(z)


def reference_gradients(model, head: _Head, output_kind: int, image: np.ndarray, target: np.ndarray):
    """TensorFlow's own Grad-CAM inputs via GradientTape through the real Keras layers."""
    import tensorflow as tf
    from keras import Model

    model = functional(model)
    conv_model = Model(model.inputs[0], head.conv_layer.output)
    image = tf.constant(image)
    with tf.GradientTape() as tape:
        activations = conv_model(image, training=False)
        tape.watch(activations)
        x = activations
        for layer in head.layers[:-1]:
            x = layer(x, training=False)
        kernel, *bias = head.layers[-1].get_weights()
        logits = tf.matmul(x, kernel) + (bias[0] if bias else 0.0)
        if output_kind == model_config_pb2.SIGMOID:
            score = logits[:, 0] * tf.cast(2 * target - 1, tf.float32)
        else:
            score = tf.gather(logits, target, axis=1, batch_dims=1)
    grads = tape.gradient(score, activations)
    return activations.numpy(), grads.numpy(), score.numpy()


def gradcam_map(activations: np.ndarray, gradients: np.ndarray) -> np.ndarray:
    """Grad-CAM maps (batch, h, w) normalised to [0, 1]: ReLU(sum_k mean(grad_k) * A_k) / max."""
    weights = gradients.astype(np.float64).mean(axis=(1, 2))
    cam = np.maximum(np.einsum("bhwc,bc->bhw", activations.astype(np.float64), weights), 0.0)
    peak = cam.reshape(cam.shape[0], -1).max(axis=1)
    return np.where(peak[:, None, None] > 0, cam / np.where(peak > 0, peak, 1.0)[:, None, None], 0.0)


def export_gradcam(
    model,
    run,  # RunInfo (unused today; kept for future per-run settings)
    work: Path,
    samples: np.ndarray,
    output_kind: int,
    opset: int,
    thresholds,  # verify.Thresholds
) -> tuple[model_config_pb2.GradCam, dict[str, Any], Path | None]:
    """Build, convert and verify the gradient graph; a model without one gets `unavailable_reason`."""
    del run
    try:
        head = find_head(model)
    except GradCamUnavailable as unavailable:
        LOG.warning("no Grad-CAM graph for %s: %s", model.name, unavailable)
        return (
            model_config_pb2.GradCam(unavailable_reason=str(unavailable)),
            {"available": False, "reason": str(unavailable)},
            None,
        )
    import onnx
    import tf2onnx

    function = _gradient_function(model, head, output_kind)
    try:
        with quiet_tf2onnx():
            onnx_model, _ = tf2onnx.convert.from_function(
                function, input_signature=function.input_signature, opset=opset
            )
        unknown = sorted(
            {n.op_type for n in onnx_model.graph.node if not onnx.defs.has(n.op_type, n.domain or "")}
        )
        if unknown:
            raise ConversionError(f"tf2onnx left TensorFlow op(s) {', '.join(unknown)} in the gradient graph")
        onnx.checker.check_model(onnx_model, full_check=True)
    except Exception as error:  # tf2onnx and the checker raise many types
        failure = f"the gradient graph of layer {head.conv_layer.name!r} cannot be converted: {error}"
        LOG.warning("no Grad-CAM graph for %s: %s", model.name, failure)
        return (
            model_config_pb2.GradCam(unavailable_reason=failure),
            {"available": False, "reason": failure},
            None,
        )
    onnx_model.graph.name = f"{model.name}_gradcam"
    path = work / GRADCAM_FILENAME
    onnx.save(onnx_model, str(path))

    # Parity against TensorFlow's GradientTape on real held-out samples: the top-1 class and one other.
    report = _gradcam_parity(model, head, output_kind, path, samples)
    report.update(
        {
            "available": True,
            "file": GRADCAM_FILENAME,
            "layer": head.conv_layer.name,
            "score": "pre-activation score of the target class (logit; ±logit for a sigmoid head)",
            "bound_max_abs_normalised_map": thresholds.gradcam_max_abs_error,
        }
    )
    proto = model_config_pb2.GradCam(
        filename=GRADCAM_FILENAME,
        layer=head.conv_layer.name,
        input_name=INPUT_NAME,
        target_input_name=TARGET_NAME,
        activations_output=ACTIVATIONS_NAME,
        gradients_output=GRADIENTS_NAME,
        score_output=SCORE_NAME,
    )
    if report["max_abs_error_normalised_map"] > thresholds.gradcam_max_abs_error:
        reason = (
            f"the ONNX Grad-CAM of layer {head.conv_layer.name!r} differs from TensorFlow's by "
            f"{report['max_abs_error_normalised_map']:.3g} (bound {thresholds.gradcam_max_abs_error:g})"
        )
        LOG.warning("no Grad-CAM graph for %s: %s", model.name, reason)
        report["available"] = False
        report["reason"] = reason
        return model_config_pb2.GradCam(unavailable_reason=reason), report, None
    return proto, report, path


def _gradcam_parity(model, head: _Head, output_kind: int, path: Path, samples: np.ndarray) -> dict[str, Any]:
    session = make_session(path)
    samples = np.ascontiguousarray(samples, dtype=np.float32)
    num_classes = 2 if output_kind == model_config_pb2.SIGMOID else int(head.layers[-1].units)
    predictions = np.asarray(model(samples, training=False))
    if output_kind == model_config_pb2.SIGMOID:
        top1 = (predictions.reshape(-1) > 0.5).astype(np.int64)
    else:
        top1 = predictions.argmax(axis=1).astype(np.int64)
    rng = np.random.default_rng(0)
    other = (top1 + rng.integers(1, num_classes, size=len(top1))) % num_classes
    images = np.concatenate([samples, samples])
    targets = np.concatenate([top1, other]).astype(np.int64)
    acts, grads, score = session.run(
        [ACTIVATIONS_NAME, GRADIENTS_NAME, SCORE_NAME], {INPUT_NAME: images, TARGET_NAME: targets}
    )
    ref_acts, ref_grads, ref_score = reference_gradients(model, head, output_kind, images, targets)
    onnx_map, ref_map = gradcam_map(acts, grads), gradcam_map(ref_acts, ref_grads)
    grad_scale = float(np.abs(ref_grads).max()) or 1.0
    return {
        "samples": len(samples),
        "targets": "top-1 class and one other class per sample",
        "evaluations": len(images),
        "max_abs_error_normalised_map": float(np.abs(onnx_map - ref_map).max()),
        "max_abs_error_gradients": float(np.abs(grads - ref_grads).max()),
        "max_rel_error_gradients": float(np.abs(grads - ref_grads).max()) / grad_scale,
        "max_abs_error_activations": float(np.abs(acts - ref_acts).max()),
        "max_abs_error_score": float(np.abs(score - ref_score).max()),
        "map_shape": list(onnx_map.shape[1:]),
    }
