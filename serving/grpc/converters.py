"""Conversions between the cnnserve.v1 wire messages and the data plane's values, in both directions.

Shared by the servicer and the client, so the byte layout of a tensor is written down once: little-endian,
C order. No gRPC here, only the generated message classes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np

from cnnserve.protos import inference_pb2, model_config_pb2
from cnnserve.serving.core.inputs import NUMPY_DTYPES, ImageInput, RawTensor
from cnnserve.serving.errors import InvalidRequestError
from cnnserve.serving.insight.explainer import (
    GRADCAM,
    OCCLUSION,
    ExplainOptions,
    ExplainResult,
    FiltersResult,
)
from cnnserve.serving.model.weights import LayerFilters

if TYPE_CHECKING:
    from cnnserve.serving.core.dataplane import Activations, Classification, ModelMetadata
    from cnnserve.serving.core.registry import VersionStatus

METHOD_BY_ENUM = {
    inference_pb2.EXPLAIN_METHOD_UNSPECIFIED: OCCLUSION,
    inference_pb2.OCCLUSION: OCCLUSION,
    inference_pb2.GRADCAM: GRADCAM,
}
ENUM_BY_METHOD = {OCCLUSION: inference_pb2.OCCLUSION, GRADCAM: inference_pb2.GRADCAM}


# -- images and tensors ------------------------------------------------------------------------------------


def image_input(image: inference_pb2.Image, index: int = 0) -> ImageInput:
    """A proto Image as the core's input: encoded bytes or a RawTensor (validated later, by index)."""
    kind = image.WhichOneof("content")
    if kind == "encoded":
        return image.encoded
    if kind == "tensor":
        tensor = image.tensor
        return RawTensor(tensor.data_type, tuple(tensor.shape), tensor.data)
    raise InvalidRequestError(f"image {index}: holds neither encoded bytes nor a tensor", index)


def image_inputs(images: Iterable[inference_pb2.Image]) -> list[ImageInput]:
    return [image_input(image, index) for index, image in enumerate(images)]


def tensor_proto(array: np.ndarray) -> inference_pb2.Tensor:
    """A float32 array as a Tensor message (little-endian, C order)."""
    array = np.ascontiguousarray(array, dtype="<f4")
    return inference_pb2.Tensor(
        data_type=model_config_pb2.TYPE_FP32, shape=list(array.shape), data=array.tobytes()
    )


def tensor_array(tensor: inference_pb2.Tensor) -> np.ndarray:
    """A Tensor message as a numpy array (a read-only view of its bytes)."""
    dtype = NUMPY_DTYPES[tensor.data_type]
    return np.frombuffer(tensor.data, dtype=dtype).reshape(tuple(tensor.shape))


def image_proto(image: bytes | np.ndarray) -> inference_pb2.Image:
    """Encoded bytes or a preprocessed float32 array (no batch dimension) as an Image message."""
    if isinstance(image, np.ndarray):
        return inference_pb2.Image(tensor=tensor_proto(image))
    return inference_pb2.Image(encoded=bytes(image))


# -- responses ---------------------------------------------------------------------------------------------


def classify_response(result: Classification) -> inference_pb2.ClassifyResponse:
    """One Classification per image. Built in place with `add()`: half the cost of constructing the messages
    and passing lists."""
    response = inference_pb2.ClassifyResponse(model=result.model.name, version=result.model.version)
    names = result.model.model.class_names
    add = response.results.add
    for indices, scores in zip(result.indices.tolist(), result.scores.tolist(), strict=True):
        predictions = add().predictions
        for i, s in zip(indices, scores, strict=True):
            predictions.add(label=names[i], index=i, score=s)
    return response


def activations_response(result: Activations) -> inference_pb2.ActivationsResponse:
    return inference_pb2.ActivationsResponse(
        model=result.model.name,
        version=result.model.version,
        layers=[
            inference_pb2.LayerActivation(
                layer=name, activations=tensor_proto(values), mosaic_png=result.mosaics.get(name, b"")
            )
            for name, values in result.layers.items()
        ],
    )


def version_statuses(statuses: Sequence[VersionStatus]) -> list[inference_pb2.ModelVersionStatus]:
    return [
        inference_pb2.ModelVersionStatus(version=s.version, state=s.state, reason=s.reason) for s in statuses
    ]


def list_models_response(models: dict[str, list[VersionStatus]]) -> inference_pb2.ListModelsResponse:
    return inference_pb2.ListModelsResponse(
        models=[
            inference_pb2.ModelSummary(name=name, versions=version_statuses(statuses))
            for name, statuses in models.items()
        ]
    )


def metadata_response(meta: ModelMetadata) -> inference_pb2.ModelMetadataResponse:
    loaded = meta.model
    config = loaded.model.config
    outputs = [config.output]
    outputs += [
        model_config_pb2.TensorSpec(name=a.output_name, data_type=model_config_pb2.TYPE_FP32, dims=a.dims)
        for a in config.activation_layers
    ]
    return inference_pb2.ModelMetadataResponse(
        name=loaded.name,
        version=loaded.version,
        versions=version_statuses(meta.versions),
        input=config.input,
        outputs=outputs,
        output_kind=config.output_kind,
        labels=list(loaded.labels),
        activation_layers=list(config.activation_layers),
        execution_providers=list(loaded.runtime.providers),
        parity_json=json.dumps(without_paths(loaded.model.parity), sort_keys=True)
        if loaded.model.parity
        else "",
        max_batch_size=loaded.batcher.settings.max_batch_size,
        preprocessing=config.preprocessing,
        weight_layers=[w.layer for w in config.layer_weights],
        explain_methods=list(meta.explain_methods),
    )


# -- filters and explanations ------------------------------------------------------------------------------


def explain_options(request: inference_pb2.ExplainRequest) -> ExplainOptions:
    if request.method not in METHOD_BY_ENUM:
        raise InvalidRequestError(f"unknown explain method {request.method}")
    occlusion = request.occlusion
    if occlusion.patch_size < 0:
        raise InvalidRequestError(f"occlusion patch size must be positive, got {occlusion.patch_size}")
    if occlusion.stride < 0:
        raise InvalidRequestError(f"occlusion stride must be positive, got {occlusion.stride}")
    return ExplainOptions(
        method=METHOD_BY_ENUM[request.method],
        target_class=request.target_class if request.has_target_class else None,
        patch_size=occlusion.patch_size,
        stride=occlusion.stride,
        fill_value=occlusion.fill_value,
        overlay=request.overlay,
    )


def filters_response(result: FiltersResult) -> inference_pb2.FiltersResponse:
    return inference_pb2.FiltersResponse(
        model=result.model,
        version=result.version,
        layer=result.filters.layer,
        kernel=tensor_proto(result.filters.kernel),
        bias=tensor_proto(result.filters.bias),
        mosaic_png=result.mosaic_png,
    )


def filters_result(response: inference_pb2.FiltersResponse) -> FiltersResult:
    """A FiltersResponse as the value the data plane returns (what the client gives its callers)."""
    kernel = tensor_array(response.kernel)
    bias = tensor_array(response.bias)
    return FiltersResult(
        response.model,
        response.version,
        LayerFilters(response.layer, "", kernel, bias, bool(np.any(bias))),
        response.mosaic_png,
    )


def explain_request(
    image: bytes | np.ndarray, model: str, version: int, options: ExplainOptions
) -> inference_pb2.ExplainRequest:
    request = inference_pb2.ExplainRequest(
        model=model,
        version=version,
        image=image_proto(image),
        method=ENUM_BY_METHOD[options.method],
        overlay=options.overlay,
        occlusion=inference_pb2.OcclusionOptions(
            patch_size=options.patch_size, stride=options.stride, fill_value=options.fill_value
        ),
    )
    if options.target_class is not None:
        request.target_class = options.target_class
        request.has_target_class = True
    return request


def explain_result(response: inference_pb2.ExplainResponse) -> ExplainResult:
    """An ExplainResponse as the value the data plane returns (what the client gives its callers)."""
    method = next(name for name, enum in ENUM_BY_METHOD.items() if enum == response.method)
    return ExplainResult(
        model=response.model,
        version=response.version,
        method=method,
        target_index=response.target.index,
        target_label=response.target.label,
        target_score=response.target.score,
        heatmap=tensor_array(response.heatmap),
        overlay_png=response.overlay_png,
    )


def explain_response(result: ExplainResult) -> inference_pb2.ExplainResponse:
    return inference_pb2.ExplainResponse(
        model=result.model,
        version=result.version,
        method=ENUM_BY_METHOD[result.method],
        target=inference_pb2.Prediction(
            label=result.target_label, index=result.target_index, score=result.target_score
        ),
        heatmap=tensor_proto(result.heatmap),
        overlay_png=result.overlay_png,
    )


def without_paths(record: Any) -> Any:
    """Export's parity record as a client may read it: absolute paths of the machine that exported it (the
    training run's folder) cut to their last component."""
    if isinstance(record, dict):
        return {key: without_paths(value) for key, value in record.items()}
    if isinstance(record, list):
        return [without_paths(value) for value in record]
    if isinstance(record, str) and record.startswith("/"):
        return PurePosixPath(record).name
    return record
