"""Building the `ModelConfig` (config.pbtxt) that tells serving everything it must not guess."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cnnserve.export.convert import INPUT_NAME, OUTPUT_NAME, LayerOutput
from cnnserve.export.weights import LayerWeightsInfo
from cnnserve.protos import model_config_pb2
from cnnserve.serving.settings import (
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_MAX_QUEUE_DELAY_US,
    DEFAULT_QUEUE_BATCHES,
)

PLATFORM = "onnxruntime_onnx"
MODEL_FILENAME = "model.onnx"
ACTIVATIONS_FILENAME = "activations.onnx"
WEIGHTS_FILENAME = "weights.npz"
GRADCAM_FILENAME = "gradcam.onnx"
DEFAULT_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")

_OUTPUT_KINDS = {
    "softmax": model_config_pb2.SOFTMAX,
    "logits": model_config_pb2.LOGITS,
    "sigmoid": model_config_pb2.SIGMOID,
}
_COLOR_MODES = {"grayscale": model_config_pb2.GRAYSCALE, "rgb": model_config_pb2.RGB}
_FILTERS = {
    "nearest": model_config_pb2.NEAREST,
    "bilinear": model_config_pb2.BILINEAR,
    "bicubic": model_config_pb2.BICUBIC,
    "lanczos": model_config_pb2.LANCZOS,
    "box": model_config_pb2.BOX,
    "hamming": model_config_pb2.HAMMING,
}


def output_kind_enum(kind: str) -> model_config_pb2.OutputKind:
    try:
        return _OUTPUT_KINDS[kind.lower()]
    except KeyError:
        raise ValueError(
            f"unknown output kind {kind!r}; expected one of {', '.join(_OUTPUT_KINDS)}"
        ) from None


def preprocessing_proto(preprocessing: Mapping[str, object]) -> model_config_pb2.Preprocessing:
    """The zoo/run.json preprocessing (color_mode, height, width, resize_filter, scale, offset) as proto."""
    color = str(preprocessing["color_mode"]).lower()
    resize = str(preprocessing.get("resize_filter", "bilinear")).lower()
    if color not in _COLOR_MODES:
        raise ValueError(f"unknown colour mode {color!r}")
    if resize not in _FILTERS:
        raise ValueError(f"unknown resize filter {resize!r}")
    return model_config_pb2.Preprocessing(
        color_mode=_COLOR_MODES[color],
        height=int(preprocessing["height"]),  # type: ignore[call-overload]
        width=int(preprocessing["width"]),  # type: ignore[call-overload]
        resize_filter=_FILTERS[resize],
        scale=float(preprocessing.get("scale", 1.0 / 255.0)),  # type: ignore[arg-type]
        offset=float(preprocessing.get("offset", 0.0)),  # type: ignore[arg-type]
    )


@dataclass(frozen=True)
class BatchingSettings:
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    max_queue_delay_microseconds: int = DEFAULT_MAX_QUEUE_DELAY_US
    max_queue_size: int = 0  # 0: DEFAULT_QUEUE_BATCHES full batches

    def queue_size(self) -> int:
        return self.max_queue_size or DEFAULT_QUEUE_BATCHES * self.max_batch_size


def build_config(
    name: str,
    zoo_model: str,
    input_dims: Sequence[int],
    output_dims: Sequence[int],
    output_kind: str,
    num_classes: int,
    preprocessing: model_config_pb2.Preprocessing,
    layers: Sequence[LayerOutput],
    weights: Sequence[LayerWeightsInfo],
    batching: BatchingSettings,
    activations_filename: str = "",
    gradcam: model_config_pb2.GradCam | None = None,
) -> model_config_pb2.ModelConfig:
    config = model_config_pb2.ModelConfig(
        name=name,
        platform=PLATFORM,
        zoo_model=zoo_model,
        max_batch_size=batching.max_batch_size,
        input=model_config_pb2.TensorSpec(
            name=INPUT_NAME, data_type=model_config_pb2.TYPE_FP32, dims=list(input_dims)
        ),
        output=model_config_pb2.TensorSpec(
            name=OUTPUT_NAME, data_type=model_config_pb2.TYPE_FP32, dims=list(output_dims)
        ),
        output_kind=output_kind_enum(output_kind),
        num_classes=num_classes,
        label_filename="labels.txt",
        preprocessing=preprocessing,
        dynamic_batching=model_config_pb2.DynamicBatching(
            max_queue_delay_microseconds=batching.max_queue_delay_microseconds,
            max_queue_size=batching.queue_size(),
        ),
        version_policy=model_config_pb2.VersionPolicy(
            latest=model_config_pb2.VersionPolicy.Latest(num_versions=1)
        ),
        execution=model_config_pb2.ExecutionSettings(
            providers=list(DEFAULT_PROVIDERS), model_filename=MODEL_FILENAME
        ),
        activations_filename=activations_filename,
        weights_filename=WEIGHTS_FILENAME if weights else "",
    )
    for layer in layers:
        config.activation_layers.add(
            name=layer.name, output_name=layer.output_name, kind=layer.kind, dims=list(layer.dims)
        )
    for info in weights:
        config.layer_weights.add(
            layer=info.layer,
            kind=info.kind,
            kernel_initializer=info.kernel_initializer,
            bias_initializer=info.bias_initializer,
            kernel_permutation=list(info.kernel_permutation),
            kernel_shape=list(info.kernel_shape),
        )
    if gradcam is not None:
        config.gradcam.CopyFrom(gradcam)
    return config
