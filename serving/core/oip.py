"""The Open Inference Protocol (KServe v2) on the serving core: plain values in, plain values out.

Both transports (gRPC `inference.GRPCInferenceService` and HTTP/REST) turn their wire format into an
`InferRequest` and call `infer`; it resolves the model version, checks the input against the model, runs
it through the same dynamic batcher as cnnserve.v1 Classify (so the two protocols' requests for one model
merge into the same batches) and answers the requested outputs. No gRPC and no HTTP here.

A model answers these outputs:
- `probabilities` FP32 [N, classes]: what Classify ranks (softmax, logits through softmax, or a sigmoid as
  (1-p, p)); asked with the classification extension (`class_count`/`"classification": k`) it becomes
  BYTES [N, k] strings "score:index:label", best first, as Triton answers;
- each activation layer by its name (`conv1`, `dense1`, ...) FP32 [N, ...layer dims], computed only when
  asked for. Metadata and config list `probabilities` as the model's output: a request naming no output
  gets it alone, and clients that ask for every listed output (perf_analyzer) do not compute every layer;
  the activation layers are listed in the config's `activation_outputs` parameter.
It takes one input, under the model's input name: the preprocessed FP32 tensor [N, *input dims] (as Triton
takes it), or BYTES [N] encoded images (PNG, JPEG, ...) that the server decodes with the model's
preprocessing, as Classify does.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cnnserve.serving.core.dataplane import DataPlane, check_finite_outputs
from cnnserve.serving.core.inputs import check_count, check_finite_batch, prepare_batch
from cnnserve.serving.core.registry import AVAILABLE, LoadedModel, ModelRegistry, VersionStatus
from cnnserve.serving.errors import InvalidRequestError, ModelNotFoundError, ServingError
from cnnserve.serving.model.runtime import CPU, top_k
from cnnserve.serving.observability.statistics import StatisticsBook, VersionStatistics

FP32 = "FP32"
BYTES = "BYTES"
PROBABILITIES = "probabilities"
PLATFORM = "onnxruntime_onnx"
BACKEND = "onnxruntime"
SERVER_NAME = "cnnserve"
# The ModelConfig parameter naming the activation layers a request may ask for ("conv1:28x28x32,...").
ACTIVATION_OUTPUTS_PARAMETER = "activation_outputs"
# The protocol extensions served, by the names Triton's clients look for in the server metadata.
EXTENSIONS = (
    "classification",
    "model_repository",
    "model_repository(unload_dependents)",
    "schedule_policy",
    "model_configuration",
    "statistics",
    "binary_tensor_data",
)
# Bytes per element of the protocol's fixed-size datatypes (BYTES elements are length-prefixed instead).
DATATYPE_SIZES = {
    "BOOL": 1,
    "UINT8": 1,
    "UINT16": 2,
    "UINT32": 4,
    "UINT64": 8,
    "INT8": 1,
    "INT16": 2,
    "INT32": 4,
    "INT64": 8,
    "FP16": 2,
    "FP32": 4,
    "FP64": 8,
    "BF16": 2,
}
TensorData = np.ndarray | Sequence[bytes]


@dataclass(frozen=True)
class InferInput:
    name: str
    datatype: str
    shape: tuple[int, ...]
    data: TensorData  # FP32: float32 array of `shape`; BYTES: one bytes object per element


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    class_count: int = 0  # > 0: the classification extension's top classes as strings


@dataclass(frozen=True)
class InferRequest:
    model: str
    version: str  # "" = the newest live version
    id: str
    inputs: tuple[InferInput, ...]
    outputs: tuple[RequestedOutput, ...] = ()  # () = probabilities


@dataclass(frozen=True)
class InferOutput:
    name: str
    datatype: str
    shape: tuple[int, ...]
    data: TensorData  # FP32: a float32 array; BYTES: a list of bytes


@dataclass(frozen=True)
class InferResult:
    model: str
    version: str
    id: str
    outputs: tuple[InferOutput, ...]

    @property
    def images(self) -> int:
        return self.outputs[0].shape[0] if self.outputs and self.outputs[0].shape else 0


@dataclass(frozen=True)
class ServerMetadata:
    name: str
    version: str
    extensions: tuple[str, ...]


@dataclass(frozen=True)
class IndexEntry:
    """One model (version) of the repository index: READY, UNAVAILABLE (with the reason) or LOADING."""

    name: str
    version: str
    state: str
    reason: str = ""


@dataclass(frozen=True)
class TensorMetadata:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1: the batch dimension


@dataclass(frozen=True)
class ModelMetadata:
    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorMetadata, ...]
    outputs: tuple[TensorMetadata, ...]


# -- models and versions ---------------------------------------------------------------------------


def parse_version(model: str, version: str) -> int:
    """A protocol version string as the registry's number ("" = 0, the newest live version)."""
    if not version:
        return 0
    if not version.isdigit() or int(version) < 1:
        raise ModelNotFoundError(
            f"model {model!r} has no version {version!r}; versions are positive integers"
        )
    return int(version)


def resolve(registry: ModelRegistry, model: str, version: str) -> LoadedModel:
    """The loaded version a request names; NOT_FOUND / UNAVAILABLE errors say why not."""
    return registry.get(model, parse_version(model, version))


def server_ready(registry: ModelRegistry) -> bool:
    """Ready when at least one model can take inference requests."""
    return bool(registry.available_models())


def server_metadata() -> ServerMetadata:
    try:
        version = importlib.metadata.version("cnnserve")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return ServerMetadata(SERVER_NAME, version, EXTENSIONS)


def repository_index(registry: ModelRegistry, ready_only: bool = False) -> list[IndexEntry]:
    """Every model of the repository and its versions' states (Triton's names: READY, UNAVAILABLE)."""
    entries = []
    for name, statuses in registry.statuses().items():
        for status in statuses:
            state = "READY" if status.state == AVAILABLE else status.state
            if ready_only and state != "READY":
                continue
            version = str(status.version) if status.version else ""
            entries.append(IndexEntry(name, version, state, status.reason))
    return entries


def statistics(
    registry: ModelRegistry, book: StatisticsBook, model: str = "", version: str = ""
) -> list[VersionStatistics]:
    """The statistics of one model version, of a model's versions, or of every model ("" = all)."""
    if model:
        if model not in registry.known:
            raise ModelNotFoundError(
                f"unknown model {model!r}; models: {', '.join(registry.model_names()) or 'none'}"
            )
        if version:
            number = parse_version(model, version)
            live = {s.version for s in registry.statuses().get(model, [])}
            if number not in live:
                raise ModelNotFoundError(f"model {model!r} has no version {version}")
            return [book.for_version(model, number)]
    return book.select(model)


def model_ready(registry: ModelRegistry, model: str, version: str) -> bool:
    """Whether the model (version) can take inference requests now."""
    try:
        resolve(registry, model, version)
    except ServingError:
        return False
    return True


def _input_dims(loaded: LoadedModel) -> tuple[int, ...]:
    return tuple(int(d) for d in loaded.model.config.input.dims)


def _activation_dims(loaded: LoadedModel) -> dict[str, tuple[int, ...]]:
    return {a.name: tuple(int(d) for d in a.dims) for a in loaded.model.config.activation_layers}


def model_metadata(loaded: LoadedModel, statuses: Sequence[VersionStatus]) -> ModelMetadata:
    versions = tuple(str(s.version) for s in statuses if s.version > 0)
    outputs = [TensorMetadata(PROBABILITIES, FP32, (-1, loaded.model.num_classes))]
    return ModelMetadata(
        name=loaded.name,
        versions=versions or (str(loaded.version),),
        platform=PLATFORM,
        inputs=(TensorMetadata(loaded.model.config.input.name, FP32, (-1, *_input_dims(loaded))),),
        outputs=tuple(outputs),
    )


def model_config(loaded: LoadedModel) -> dict[str, object]:
    """The model's configuration as Triton's ModelConfig extension reports it (plain JSON values)."""
    config = loaded.model.config
    device_kind = "KIND_CPU" if loaded.runtime.providers[0] == CPU else "KIND_GPU"
    dims = _input_dims(loaded)
    settings = loaded.batcher.settings
    policy = config.version_policy.WhichOneof("policy_choice")
    if policy == "all":
        version_policy: dict[str, object] = {"all": {}}
    elif policy == "specific":
        version_policy = {"specific": {"versions": [int(v) for v in config.version_policy.specific.versions]}}
    else:
        version_policy = {"latest": {"num_versions": config.version_policy.latest.num_versions or 1}}
    outputs = [
        {
            "name": PROBABILITIES,
            "data_type": "TYPE_FP32",
            "dims": [loaded.model.num_classes],
            "label_filename": config.label_filename,
        }
    ]
    return {
        "name": loaded.name,
        "platform": PLATFORM,
        "backend": BACKEND,
        "version_policy": version_policy,
        "max_batch_size": settings.max_batch_size,
        "input": [
            {
                "name": config.input.name,
                "data_type": "TYPE_FP32",
                "format": "FORMAT_NHWC" if len(dims) == 3 else "FORMAT_NONE",
                "dims": list(dims),
            }
        ],
        "output": outputs,
        "instance_group": [{"name": loaded.name, "kind": device_kind, "count": 1}],
        "default_model_filename": loaded.model.model_file.name,
        # Activation layers answer when a request names them; listed here, not among the outputs, so that
        # clients asking for every output (perf_analyzer does) do not compute every layer of every image.
        "parameters": {
            ACTIVATION_OUTPUTS_PARAMETER: {
                "string_value": ",".join(
                    f"{layer}:{'x'.join(map(str, layer_dims))}"
                    for layer, layer_dims in _activation_dims(loaded).items()
                )
            }
        },
        **(
            {"dynamic_batching": {"max_queue_delay_microseconds": round(settings.max_queue_delay_s * 1e6)}}
            if settings.enabled
            else {}
        ),
    }


# -- inference ---------------------------------------------------------------------------------------


def _check_outputs(loaded: LoadedModel, requested: Sequence[RequestedOutput]) -> list[RequestedOutput]:
    if not requested:
        return [RequestedOutput(PROBABILITIES)]
    known = [PROBABILITIES, *_activation_dims(loaded)]
    seen = set()
    for output in requested:
        if output.name not in known:
            raise InvalidRequestError(
                f"model {loaded.name!r} has no output {output.name!r}; outputs: {', '.join(known)}"
            )
        if output.name in seen:
            raise InvalidRequestError(f"output {output.name!r} is requested twice")
        seen.add(output.name)
        if output.class_count < 0:
            raise InvalidRequestError(
                f"output {output.name!r}: classification must be a positive count, not {output.class_count}"
            )
        if output.class_count and output.name != PROBABILITIES:
            raise InvalidRequestError(
                f"output {output.name!r} is an activation layer: the classification extension applies to "
                f"{PROBABILITIES!r} only"
            )
    return list(requested)


def _check_input(loaded: LoadedModel, inputs: Sequence[InferInput], max_images: int) -> InferInput:
    expected = loaded.model.config.input.name
    dims = _input_dims(loaded)
    if len(inputs) != 1:
        names = ", ".join(repr(i.name) for i in inputs) or "none"
        raise InvalidRequestError(
            f"model {loaded.name!r} takes one input, {expected!r}; the request has {len(inputs)}: {names}"
        )
    tensor = inputs[0]
    if tensor.name != expected:
        raise InvalidRequestError(
            f"input {tensor.name!r} is not an input of model {loaded.name!r}; "
            f"its input is {expected!r} ({_takes(dims)})"
        )
    if tensor.datatype == FP32:
        if len(tensor.shape) != len(dims) + 1 or tuple(tensor.shape[1:]) != dims or tensor.shape[0] < 1:
            raise InvalidRequestError(
                f"input {tensor.name!r} has shape {list(tensor.shape)}; "
                f"model {loaded.name!r} takes {_takes(dims)}"
            )
    elif tensor.datatype == BYTES:
        if len(tensor.shape) not in (1, 2) or (len(tensor.shape) == 2 and tensor.shape[1] != 1):
            raise InvalidRequestError(
                f"input {tensor.name!r} has shape {list(tensor.shape)}; BYTES images are one per element, "
                "shape [N] (or [N, 1])"
            )
    else:
        raise InvalidRequestError(
            f"input {tensor.name!r} has datatype {tensor.datatype}; "
            f"model {loaded.name!r} takes {_takes(dims)}"
        )
    count = tensor.shape[0]
    if count > max_images:
        raise InvalidRequestError(
            f"input {tensor.name!r} holds {count} images, more than the limit of {max_images} per request"
        )
    return tensor


def _takes(dims: tuple[int, ...]) -> str:
    """What a model's input takes, as error messages say it."""
    return f"FP32 {[-1, *dims]} or BYTES [-1] (encoded images)"


async def infer(
    dataplane: DataPlane, request: InferRequest, deadline: float | None = None
) -> tuple[LoadedModel, InferResult]:
    """Answer one inference request (`deadline` in loop time: past it a queued request is dropped); the
    version that answered and the answer."""
    loaded = resolve(dataplane.registry, request.model, request.version)
    tensor = _check_input(loaded, request.inputs, dataplane.limits.max_images)
    outputs = _check_outputs(loaded, request.outputs)
    layers = [o.name for o in outputs if o.name != PROBABILITIES]
    wants_probabilities = len(layers) < len(outputs)
    try:
        probs, activations = await _compute(dataplane, loaded, tensor, layers, wants_probabilities, deadline)
    except InvalidRequestError as error:
        if error.index is None:
            raise
        raise InvalidRequestError(f"input {tensor.name!r}: {error}", error.index) from error
    answered = tuple(_output(loaded, output, probs, activations) for output in outputs)
    return loaded, InferResult(loaded.name, str(loaded.version), request.id, answered)


async def _compute(
    dataplane: DataPlane,
    loaded: LoadedModel,
    tensor: InferInput,
    layers: list[str],
    wants_probabilities: bool,
    deadline: float | None,
) -> tuple[np.ndarray | None, dict[str, np.ndarray]]:
    """Probabilities through the batcher, activations in the executor (concurrently when both)."""
    if tensor.datatype == BYTES and not layers:
        return await dataplane.probabilities(loaded, list(tensor.data), deadline), {}
    if tensor.datatype == BYTES:
        images = list(tensor.data)
        check_count(images, dataplane.limits)
        batch = await prepare_batch(images, loaded.spec, dataplane.limits, dataplane.decode_executor)
    else:
        assert isinstance(tensor.data, np.ndarray)
        batch = check_finite_batch(tensor.data)
        if not layers:  # the common call: straight to the batcher, no task of its own
            return check_finite_outputs(await loaded.batcher.submit(batch, deadline), "output"), {}
    probs: asyncio.Future[np.ndarray] | None = None
    if wants_probabilities:
        probs = asyncio.ensure_future(loaded.batcher.submit(batch, deadline))
    activations: dict[str, np.ndarray] = {}
    try:
        if layers:
            loop = asyncio.get_running_loop()
            activations = await loop.run_in_executor(
                dataplane.executor, loaded.runtime.activations, batch, layers
            )
    finally:
        result = None if probs is None else await probs
    for name, values in activations.items():
        check_finite_outputs(np.asarray(values), f"activation of layer {name}")
    return (None if result is None else check_finite_outputs(result, "output")), activations


def _output(
    loaded: LoadedModel,
    output: RequestedOutput,
    probs: np.ndarray | None,
    activations: dict[str, np.ndarray],
) -> InferOutput:
    if output.name != PROBABILITIES:
        values = np.ascontiguousarray(activations[output.name], dtype=np.float32)
        return InferOutput(output.name, FP32, values.shape, values)
    assert probs is not None
    if not output.class_count:
        return InferOutput(PROBABILITIES, FP32, probs.shape, probs)
    k = min(output.class_count, probs.shape[1])  # as Triton: at most every class
    return InferOutput(PROBABILITIES, BYTES, (len(probs), k), classification_strings(probs, k, loaded.labels))


def classification_strings(probs: np.ndarray, k: int, labels: Sequence[str]) -> list[bytes]:
    """Triton's classification extension: per image the k best classes as b"score:index:label", best first."""
    indices, scores = top_k(probs, k)
    count = len(labels)
    return [
        f"{score:f}:{index}:{labels[index] if index < count else index}".encode()
        for row_indices, row_scores in zip(indices.tolist(), scores.tolist(), strict=True)
        for index, score in zip(row_indices, row_scores, strict=True)
    ]


def echo_result(model: str, request_id: str, count: int) -> InferResult:
    """The answer of the benchmarks' echo server: zero probabilities over ten classes, no work done."""
    zeros = np.zeros((count, 10), dtype=np.float32)
    return InferResult(model, "1", request_id, (InferOutput(PROBABILITIES, FP32, zeros.shape, zeros),))


def parse_classification(entry: bytes | str) -> tuple[float, int, str]:
    """One classification-extension string, "score:index:label" (the label may hold colons)."""
    text = entry.decode("utf-8") if isinstance(entry, bytes) else entry
    score, index, *label = text.split(":", 2)
    return float(score), int(index), label[0] if label else index
