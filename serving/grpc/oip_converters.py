"""Open Inference Protocol messages (`inference.*`) <-> the core's values (serving.core.oip).

Input data arrives either as `raw_input_contents` (one bytes entry per input, what tritonclient and
perf_analyzer send) or as typed `contents`; outputs always go back as `raw_output_contents`, which every
Triton client reads. An FP32 raw input becomes a view of the request's bytes, never a per-image copy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from google.protobuf import json_format

from cnnserve.protos import oip_model_config_pb2, oip_pb2
from cnnserve.serving.core import oip, oip_tensors
from cnnserve.serving.errors import InvalidRequestError
from cnnserve.serving.observability.statistics import Duration, VersionStatistics


def infer_request(request: oip_pb2.ModelInferRequest) -> oip.InferRequest:
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidRequestError(
            f"the request has {len(request.inputs)} inputs but {len(raw)} raw_input_contents entries"
        )
    inputs = []
    for index, tensor in enumerate(request.inputs):
        if raw:
            inputs.append(oip_tensors.input_from_raw(tensor.name, tensor.datatype, tensor.shape, raw[index]))
        else:
            inputs.append(_typed_input(tensor))
    outputs = tuple(oip.RequestedOutput(output.name, _class_count(output)) for output in request.outputs)
    return oip.InferRequest(request.model_name, request.model_version, request.id, tuple(inputs), outputs)


def _class_count(output: oip_pb2.ModelInferRequest.InferRequestedOutputTensor) -> int:
    parameter = output.parameters.get("classification")
    if parameter is None:
        return 0
    if parameter.WhichOneof("parameter_choice") not in ("int64_param", "uint64_param"):
        raise InvalidRequestError(f"output {output.name!r}: the classification parameter must be an integer")
    return parameter.int64_param or parameter.uint64_param


def _typed_input(tensor: oip_pb2.ModelInferRequest.InferInputTensor) -> oip.InferInput:
    dims = oip_tensors.check_shape(tensor.name, tensor.shape)
    count = oip_tensors.element_count(dims)
    if tensor.datatype == oip.BYTES:
        elements = list(tensor.contents.bytes_contents)
        if len(elements) != count:
            raise InvalidRequestError(
                f"input {tensor.name!r}: shape {list(dims)} needs {count} elements, bytes_contents holds "
                f"{len(elements)}"
            )
        return oip.InferInput(tensor.name, tensor.datatype, dims, elements)
    if tensor.datatype != oip.FP32:
        return oip.InferInput(tensor.name, tensor.datatype, dims, np.empty(0))  # the core names what it takes
    values = tensor.contents.fp32_contents
    if len(values) != count:
        raise InvalidRequestError(
            f"input {tensor.name!r}: shape {list(dims)} needs {count} elements, "
            f"fp32_contents holds {len(values)}"
        )
    return oip.InferInput(
        tensor.name, tensor.datatype, dims, np.asarray(values, dtype=np.float32).reshape(dims)
    )


def infer_response(result: oip.InferResult) -> oip_pb2.ModelInferResponse:
    response = oip_pb2.ModelInferResponse(model_name=result.model, model_version=result.version, id=result.id)
    for output in result.outputs:
        response.outputs.add(name=output.name, datatype=output.datatype, shape=output.shape)
        response.raw_output_contents.append(oip_tensors.output_raw(output.datatype, output.data))
    return response


def _tensors(
    tensors: Sequence[oip.TensorMetadata],
) -> list[oip_pb2.ModelMetadataResponse.TensorMetadata]:
    return [
        oip_pb2.ModelMetadataResponse.TensorMetadata(name=t.name, datatype=t.datatype, shape=t.shape)
        for t in tensors
    ]


def metadata_response(metadata: oip.ModelMetadata) -> oip_pb2.ModelMetadataResponse:
    return oip_pb2.ModelMetadataResponse(
        name=metadata.name,
        versions=metadata.versions,
        platform=metadata.platform,
        inputs=_tensors(metadata.inputs),
        outputs=_tensors(metadata.outputs),
    )


def config_response(config: dict[str, object]) -> oip_pb2.ModelConfigResponse:
    message = json_format.ParseDict(config, oip_model_config_pb2.ModelConfig())
    return oip_pb2.ModelConfigResponse(config=message)


def _duration(duration: Duration) -> oip_pb2.StatisticDuration:
    return oip_pb2.StatisticDuration(count=duration.count, ns=duration.ns)


def statistics_response(selected: Sequence[VersionStatistics]) -> oip_pb2.ModelStatisticsResponse:
    response = oip_pb2.ModelStatisticsResponse()
    for stats in selected:
        entry = response.model_stats.add(
            name=stats.name,
            version=str(stats.version),
            last_inference=stats.last_inference_ms,
            inference_count=stats.inference_count,
            execution_count=stats.execution_count,
        )
        entry.inference_stats.success.CopyFrom(_duration(stats.success))
        entry.inference_stats.fail.CopyFrom(_duration(stats.fail))
        entry.inference_stats.queue.CopyFrom(_duration(stats.queue))
        # Preparing a batch's input and splitting its output are timed with the inference itself; the
        # counts still match, as Triton's clients (perf_analyzer) require.
        inputs_outputs = oip_pb2.StatisticDuration(count=stats.compute_infer.count)
        entry.inference_stats.compute_input.CopyFrom(inputs_outputs)
        entry.inference_stats.compute_infer.CopyFrom(_duration(stats.compute_infer))
        entry.inference_stats.compute_output.CopyFrom(inputs_outputs)
        for size, duration in sorted(stats.batches.items()):
            io = oip_pb2.StatisticDuration(count=duration.count)
            entry.batch_stats.add(
                batch_size=size, compute_input=io, compute_infer=_duration(duration), compute_output=io
            )
    return response


def repository_index_response(entries: Sequence[oip.IndexEntry]) -> oip_pb2.RepositoryIndexResponse:
    response = oip_pb2.RepositoryIndexResponse()
    for entry in entries:
        response.models.add(name=entry.name, version=entry.version, state=entry.state, reason=entry.reason)
    return response
