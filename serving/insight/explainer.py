"""The logic behind `GetFilters` and `Explain`, without gRPC: what the servicer and `--repo` mode call.

The servicer (`serving/servicer.py`, grpc.aio) calls the two coroutines of this module and maps the
exceptions with its `status_for`:

    response = await insight_service.get_filters(core, request)            # -> FiltersResponse
    response = await insight_service.explain(core, request, deadline=None)  # -> ExplainResponse

`core` is the `inference.ServingCore` (registry, executor, limits). Each `ModelRegistry` gets one
`Insight` (in a weak-keyed cache, so it dies with the registry), which caches each version's weights and
Grad-CAM session (a small LRU).

`explain` decodes the image exactly as Classify does (`inference.prepare_batch`: undecodable image →
`InvalidRequestError`) and sends the occluded copies through `loaded.batcher.submit` -- the Classify
path -- as `bulk` chunks, two in flight (the batcher's concurrent batches) and cut to even sizes, so a
worker's one-thread sessions compute them side by side while Classify requests queued meanwhile ride
along or run between them instead of behind the whole explanation. A chunk is `max_batch_size` copies
for a small model, fewer for a big one: sized from each chunk's measured round trip to take about
`DEFAULT_CHUNK_SECONDS`, which bounds what a Classify call can wait behind. Grad-CAM's session call and
the numpy work run in the core's executor.

Exceptions (from `cnnserve.serving.insight.filters`) and their status codes, also as `STATUS_BY_ERROR` (names):
    UnknownLayerError → NOT_FOUND (lists the layers with weights); LayerHasNoWeightsError →
    INVALID_ARGUMENT; InvalidInsightRequest (InvalidExplainRequest, InvalidFiltersRequest) →
    INVALID_ARGUMENT; GradCamUnavailableError → FAILED_PRECONDITION (says why); WeightsReadError → INTERNAL.
Plus the core's own errors (unknown model, bad image, queue full, deadline) as for Classify.

Lower-level, for `--repo` mode, benchmarks and tests: `Insight.get_filters`, `Insight.explain` (blocking,
any `classify(batch) -> probabilities`) and `Insight.explain_async` (awaitable `classify`).
"""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Generator
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import numpy as np

from cnnserve.protos import inference_pb2, model_config_pb2
from cnnserve.serving.grpc import converters as wire
from cnnserve.serving.insight.filters import (
    GradCamUnavailableError,
    InvalidExplainRequest,
    InvalidInsightRequest,
    LayerFilters,
    LayerHasNoWeightsError,
    OcclusionPlan,
    UnknownLayerError,
    WeightsReadError,
    WeightStore,
    filters_mosaic_png,
    gradcam_heatmap,
    overlay_png,
)
from cnnserve.serving.model.repository import ModelVersion
from cnnserve.serving.model.runtime import ModelLoadError, SessionOptions, choose_providers, create_session, top_k
from cnnserve.serving.grpc.converters import tensor_proto

# Occluded copies are sent in chunks that each take about this long (at most max_batch_size images);
# 0 = always full batches.
DEFAULT_CHUNK_SECONDS = 0.05

OCCLUSION = "occlusion"
GRADCAM = "gradcam"
METHODS = (OCCLUSION, GRADCAM)

STATUS_BY_ERROR: tuple[tuple[type[Exception], str], ...] = (
    (UnknownLayerError, "NOT_FOUND"),
    (LayerHasNoWeightsError, "INVALID_ARGUMENT"),
    (InvalidInsightRequest, "INVALID_ARGUMENT"),
    (GradCamUnavailableError, "FAILED_PRECONDITION"),
    (WeightsReadError, "INTERNAL"),
)

_METHOD_BY_ENUM = {
    inference_pb2.EXPLAIN_METHOD_UNSPECIFIED: OCCLUSION,
    inference_pb2.OCCLUSION: OCCLUSION,
    inference_pb2.GRADCAM: GRADCAM,
}
_ENUM_BY_METHOD = {OCCLUSION: inference_pb2.OCCLUSION, GRADCAM: inference_pb2.GRADCAM}


@dataclass(frozen=True)
class FiltersResult:
    model: str
    version: int
    filters: LayerFilters
    mosaic_png: bytes


@dataclass(frozen=True)
class ExplainOptions:
    method: str = OCCLUSION
    target_class: int | None = None  # None = the top-1 class of Classify
    patch_size: int = 0  # 0 = the default for the input size
    stride: int = 0  # 0 = the default for the input size
    fill_value: float = 0.0  # in the model's input scale
    overlay: bool = False


@dataclass(frozen=True)
class ExplainResult:
    model: str
    version: int
    method: str
    target_index: int
    target_label: str
    target_score: float  # the probability of the target class on the unaltered image
    heatmap: np.ndarray  # (height, width) float32 at the model's input size
    overlay_png: bytes
    # Occlusion only: the settings used and how many occluded copies were scored.
    patch_size: int = 0
    stride: int = 0
    copies: int = 0


def gradcam_available(model: ModelVersion) -> tuple[bool, str]:
    """Whether a version has a gradient graph, and if not, why (as export recorded it)."""
    gradcam = model.config.gradcam
    if gradcam.filename and (model.path / gradcam.filename).is_file():
        return True, ""
    if gradcam.filename:
        return False, f"gradient graph {model.path / gradcam.filename} is missing"
    return False, gradcam.unavailable_reason or "export wrote no gradient graph for this model"


def explain_methods(model: ModelVersion) -> list[str]:
    """The `ExplainMethod` names a version supports, for `GetModelMetadata.explain_methods`."""
    return ["OCCLUSION", "GRADCAM"] if gradcam_available(model)[0] else ["OCCLUSION"]


class _GradCamSession:
    """The ONNX Runtime session of one version's gradient graph."""

    def __init__(self, model: ModelVersion, options: SessionOptions) -> None:
        self.spec = model.config.gradcam
        providers = choose_providers(options.device, model.config.execution.providers)
        self.session = create_session(model.path / self.spec.filename, providers, options)

    def run(self, image: np.ndarray, target: int) -> tuple[np.ndarray, np.ndarray, float]:
        outputs = [self.spec.activations_output, self.spec.gradients_output]
        if self.spec.score_output:
            outputs.append(self.spec.score_output)
        feeds = {
            self.spec.input_name: np.ascontiguousarray(image[None], dtype=np.float32),
            self.spec.target_input_name: np.array([target], dtype=np.int64),
        }
        results = self.session.run(outputs, feeds)
        score = float(np.asarray(results[2]).reshape(-1)[0]) if len(results) > 2 else float("nan")
        return results[0], results[1], score


class _VersionInsight:
    """Per model version: its weight store and (lazily) its gradient-graph session."""

    def __init__(self, model: ModelVersion, options: SessionOptions) -> None:
        self.model = model
        self.weights = WeightStore(model)
        self._options = options
        self._lock = threading.Lock()
        self._gradcam: _GradCamSession | None = None
        # The last measured occlusion round trip per image: the next explanation's first chunk size.
        self.seconds_per_image: float | None = None

    def check_gradcam(self) -> None:
        available, reason = gradcam_available(self.model)
        if not available:
            raise GradCamUnavailableError(
                f"model {self.model.name!r} version {self.model.version} has no Grad-CAM: {reason}"
            )

    def gradcam_session(self) -> _GradCamSession:
        self.check_gradcam()
        with self._lock:
            if self._gradcam is None:
                try:
                    self._gradcam = _GradCamSession(self.model, self._options)
                except ModelLoadError as error:
                    raise GradCamUnavailableError(
                        f"model {self.model.name!r} version {self.model.version} has no Grad-CAM: {error}"
                    ) from error
            return self._gradcam


@dataclass(frozen=True)
class _Classify:
    """A step of an explanation: classify this batch through the batcher, send back probabilities."""

    batch: np.ndarray


@dataclass(frozen=True)
class _Submit:
    """A step of an explanation: start classifying this batch, send back a handle for `_Collect` at once."""

    batch: np.ndarray


@dataclass(frozen=True)
class _Collect:
    """A step of an explanation: wait for a submitted batch, send back its probabilities."""

    handle: Any


@dataclass(frozen=True)
class _Call:
    """A step of an explanation: run this function and send back its result -- off the event loop
    unless it is `cheap` (then a thread hop would cost more than the work)."""

    function: Callable[[], Any]
    cheap: bool = False


# Below these sizes a step runs on the event loop itself: an occluded chunk of this many bytes, a heatmap
# reduced from this many copies.
INLINE_CHUNK_BYTES = 1 << 20
INLINE_HEATMAP_COPIES = 256


_Steps = Generator[_Classify | _Submit | _Collect | _Call, Any, ExplainResult]


class Insight:
    """Filters and explanations for any model version; caches per-version state (LRU of `cache_size`)."""

    def __init__(
        self,
        session_options: SessionOptions | None = None,
        cache_size: int = 16,
        chunk_seconds: float = DEFAULT_CHUNK_SECONDS,
    ) -> None:
        self._options = session_options or SessionOptions()
        self._chunk_seconds = chunk_seconds
        self._cache_size = max(1, cache_size)
        self._lock = threading.Lock()
        self._versions: OrderedDict[tuple[str, int, str], _VersionInsight] = OrderedDict()

    def _version(self, model: ModelVersion) -> _VersionInsight:
        key = (model.name, model.version, str(model.path))
        with self._lock:
            state = self._versions.get(key)
            if state is None or state.model.config is not model.config:  # new, or the version was reloaded
                state = _VersionInsight(model, self._options)
                self._versions[key] = state
            self._versions.move_to_end(key)
            while len(self._versions) > self._cache_size:
                self._versions.popitem(last=False)
            return state

    def weight_layers(self, model: ModelVersion) -> list[str]:
        """The layers `GetFilters` can return, for `GetModelMetadata.weight_layers`."""
        return self._version(model).weights.layers

    # -- GetFilters ------------------------------------------------------------------------------

    def get_filters(
        self, model: ModelVersion, layer: str, *, mosaic: bool = False, input_channel: int = -1
    ) -> FiltersResult:
        filters = self._version(model).weights.filters(layer)
        png = filters_mosaic_png(filters, model.config, input_channel) if mosaic else b""
        return FiltersResult(model.name, model.version, filters, png)

    # -- Explain ---------------------------------------------------------------------------------

    def explain(
        self,
        model: ModelVersion,
        image: np.ndarray,
        options: ExplainOptions,
        classify: Callable[[np.ndarray], np.ndarray],
        chunk_size: int,
    ) -> ExplainResult:
        """Blocking driver: `classify` runs a batch in this thread (e.g. `ModelRuntime.classify`)."""
        steps = self._steps(model, image, options, chunk_size)
        reply: Any = None
        while True:
            try:
                step = steps.send(reply)
            except StopIteration as stop:
                return stop.value
            if isinstance(step, _Classify | _Submit):
                reply = classify(step.batch)  # computed now; its handle is the result
            elif isinstance(step, _Collect):
                reply = step.handle
            else:
                reply = step.function()

    async def explain_async(
        self,
        model: ModelVersion,
        image: np.ndarray,
        options: ExplainOptions,
        classify: Callable[[np.ndarray], Awaitable[np.ndarray]],
        chunk_size: int,
        executor: Executor | None = None,
        chunks_in_flight: int = 1,
    ) -> ExplainResult:
        """asyncio driver: occluded chunks go through `classify` (the batcher), `chunks_in_flight` at a
        time; Grad-CAM's session call and the numpy reductions run in `executor` (None: the loop's default).
        """
        loop = asyncio.get_running_loop()
        steps = self._steps(model, image, options, chunk_size, chunks_in_flight)
        reply: Any = None
        submitted: list[asyncio.Task[np.ndarray]] = []
        try:
            while True:
                try:
                    step = steps.send(reply)
                except StopIteration as stop:
                    return stop.value
                if isinstance(step, _Classify):
                    reply = await classify(step.batch)
                elif isinstance(step, _Submit):
                    reply = loop.create_task(classify(step.batch))
                    submitted.append(reply)
                elif isinstance(step, _Collect):
                    reply = await step.handle
                elif step.cheap:
                    reply = step.function()
                else:
                    reply = await loop.run_in_executor(executor, step.function)
        finally:
            for task in submitted:  # an error or a cancelled call: chunks still queued are not computed
                task.cancel()

    def _steps(
        self,
        model: ModelVersion,
        image: np.ndarray,
        options: ExplainOptions,
        chunk_size: int,
        chunks_in_flight: int = 1,
    ) -> _Steps:
        """The explanation as a sequence of steps, so the blocking and asyncio drivers share every line."""
        config = model.config
        if options.method not in METHODS:
            raise InvalidExplainRequest(f"unknown explain method {options.method!r}; choose one of {METHODS}")
        num_classes = _num_classes(model)
        target = options.target_class
        if target is not None and not 0 <= target < num_classes:
            raise InvalidExplainRequest(
                f"target class {target} is outside model {model.name!r}'s classes 0..{num_classes - 1}"
            )
        dims = tuple(int(d) for d in config.input.dims)
        image = np.ascontiguousarray(image, dtype=np.float32).reshape(dims)
        height, width = config.preprocessing.height, config.preprocessing.width
        state = self._version(model)

        if options.method == GRADCAM:
            state.check_gradcam()  # refuse before any work; the session itself is made off the event loop
            session = yield _Call(state.gradcam_session)
            probs = np.asarray((yield _Classify(image[None])))[0]
            target = int(top_k(probs[None], 1)[0][0, 0]) if target is None else target
            activations, gradients, _ = yield _Call(lambda: session.run(image, target))
            heatmap = yield _Call(lambda: gradcam_heatmap(activations, gradients, height, width))
            plan = None
        else:
            plan = OcclusionPlan.create(
                image, dims, height, width, options.patch_size, options.stride, options.fill_value
            )
            # Item 0 is the unaltered image (it rides with the first chunk), item i > 0 is copy i - 1.
            # Up to `chunks_in_flight` chunks wait or compute at once, so the batcher can run them side by
            # side on a CPU whose sessions use one thread each; results are collected in order.
            window = max(1, chunks_in_flight)
            sizer = _ChunkSizer(chunk_size, self._chunk_seconds, state.seconds_per_image)
            image_bytes = plan.image.nbytes
            total = plan.size + 1
            scores: list[np.ndarray] = []
            pending: deque[tuple[Any, int, float]] = deque()
            start = 0
            chunk = _even_chunk(total, sizer.next_size, window)
            while start < total or pending:
                if start < total and len(pending) < window:
                    if not sizer.next_size / 2 < chunk <= sizer.next_size:  # the rate has changed
                        chunk = _even_chunk(total - start, sizer.next_size, window)
                    stop = min(start + chunk, total)
                    batch = yield _Call(
                        lambda start=start, stop=stop: _occluded_chunk(plan, start, stop),
                        cheap=(stop - start) * image_bytes <= INLINE_CHUNK_BYTES,
                    )
                    sent = time.perf_counter()
                    pending.append(((yield _Submit(batch)), stop - start, sent))
                    start = stop
                    continue
                handle, count, sent = pending.popleft()
                scores.append(np.asarray((yield _Collect(handle))))
                sizer.observe(count, time.perf_counter() - sent)
            state.seconds_per_image = sizer.seconds_per_image
            all_probs = np.concatenate(scores)
            probs = all_probs[0]
            target = int(top_k(probs[None], 1)[0][0, 0]) if target is None else target
            copies = all_probs[1:, target]
            heatmap = yield _Call(
                lambda: plan.heatmap(float(probs[target]), copies), cheap=plan.size <= INLINE_HEATMAP_COPIES
            )
        png = (
            (yield _Call(lambda: overlay_png(image, heatmap, config.preprocessing)))
            if options.overlay
            else b""
        )
        return ExplainResult(
            model=model.name,
            version=model.version,
            method=options.method,
            target_index=target,
            target_label=model.labels[target] if target < len(model.labels) else str(target),
            target_score=float(probs[target]),
            heatmap=np.asarray(heatmap, dtype=np.float32),
            overlay_png=png,
            patch_size=plan.patch if plan else 0,
            stride=plan.stride if plan else 0,
            copies=plan.size if plan else 0,
        )


class _ChunkSizer:
    """How many occluded copies to send next, so one chunk keeps the model busy about `seconds`.

    A chunk of a small model is a full batch (`max_batch_size`); a big model's chunks shrink until one
    takes about `seconds` from being sent to its answer (queueing included), so a Classify request never
    waits behind much more than that, whatever the model. The version's first explanation starts small,
    to measure; later ones start from the rate the previous one measured.
    """

    FIRST = 8

    def __init__(self, max_size: int, seconds: float, seconds_per_image: float | None = None) -> None:
        self.max_size = max(1, max_size)
        self.seconds = seconds
        self.seconds_per_image = seconds_per_image
        self._images = 0
        self._elapsed = 0.0
        if seconds <= 0:
            self.next_size = self.max_size
        elif seconds_per_image is None:
            self.next_size = min(self.max_size, self.FIRST)
        else:
            self._size_from_rate()

    def _size_from_rate(self) -> None:
        assert self.seconds_per_image is not None
        self.next_size = max(1, min(self.max_size, int(self.seconds / self.seconds_per_image)))

    def observe(self, images: int, elapsed: float) -> None:
        """A chunk of `images` took `elapsed` seconds from being sent to its answer."""
        if self.seconds <= 0 or images <= 0:
            return
        self._images += images
        self._elapsed += max(elapsed, 1e-6)
        self.seconds_per_image = self._elapsed / self._images
        self._size_from_rate()


def _even_chunk(items: int, most: int, window: int) -> int:
    """A chunk size of at most `most` that cuts `items` into a multiple of `window` nearly equal chunks,
    so the chunks computing side by side finish together (170 copies, 64 at most, 2 at a time: 4 × 43
    rather than 64 + 64 and then 42 alone; the last one may be smaller)."""
    chunks = -(-items // max(1, most))
    chunks = -(-chunks // window) * window
    return max(1, -(-items // chunks))


def _occluded_chunk(plan: OcclusionPlan, start: int, stop: int) -> np.ndarray:
    """Items `start`..`stop` of an explanation's batch: item 0 is the unaltered image, item i is copy i-1."""
    batch = plan.copies(max(0, start - 1), stop - 1)
    if start == 0:
        batch = np.concatenate([plan.image.reshape(1, *plan.input_dims), batch])
    return batch


def _num_classes(model: ModelVersion) -> int:
    config = model.config
    if config.num_classes:
        return int(config.num_classes)
    if config.output_kind == model_config_pb2.SIGMOID:
        return 2
    return len(model.labels)


# ---------------------------------------------------------------------------------------------------
# Proto conversion (no grpc): request → options, result → response
# ---------------------------------------------------------------------------------------------------


def explain_options_from_request(request: inference_pb2.ExplainRequest) -> ExplainOptions:
    if request.method not in _METHOD_BY_ENUM:
        raise InvalidExplainRequest(f"unknown explain method {request.method}")
    occlusion = request.occlusion
    if occlusion.patch_size < 0:
        raise InvalidExplainRequest(f"occlusion patch size must be positive, got {occlusion.patch_size}")
    if occlusion.stride < 0:
        raise InvalidExplainRequest(f"occlusion stride must be positive, got {occlusion.stride}")
    return ExplainOptions(
        method=_METHOD_BY_ENUM[request.method],
        target_class=request.target_class if request.has_target_class else None,
        patch_size=occlusion.patch_size,
        stride=occlusion.stride,
        fill_value=occlusion.fill_value,
        overlay=request.overlay,
    )


def fill_filters_response(result: FiltersResult, response: inference_pb2.FiltersResponse) -> None:
    response.model = result.model
    response.version = result.version
    response.layer = result.filters.layer
    response.kernel.CopyFrom(tensor_proto(result.filters.kernel))
    response.bias.CopyFrom(tensor_proto(result.filters.bias))
    response.mosaic_png = result.mosaic_png


def fill_explain_response(result: ExplainResult, response: inference_pb2.ExplainResponse) -> None:
    response.model = result.model
    response.version = result.version
    response.method = _ENUM_BY_METHOD[result.method]
    response.target.CopyFrom(
        inference_pb2.Prediction(
            label=result.target_label, index=result.target_index, score=result.target_score
        )
    )
    response.heatmap.CopyFrom(tensor_proto(result.heatmap))
    response.overlay_png = result.overlay_png


def status_name(error: Exception) -> str | None:
    """The gRPC status code name for an insight error (None: not ours)."""
    for kind, name in STATUS_BY_ERROR:
        if isinstance(error, kind):
            return name
    return None


# ---------------------------------------------------------------------------------------------------
# The two RPCs over the serving core (the servicer only maps exceptions to status codes)
# ---------------------------------------------------------------------------------------------------


# One Insight per registry: weak keys, so a registry's cached weights and sessions go with it.
_INSIGHT_BY_REGISTRY: weakref.WeakKeyDictionary[Any, Insight] = weakref.WeakKeyDictionary()
_INSIGHT_LOCK = threading.Lock()


def insight_for(core: Any) -> Insight:
    """The `Insight` of a serving core's registry (created on first use with its session options)."""
    registry = core.registry
    with _INSIGHT_LOCK:
        insight = _INSIGHT_BY_REGISTRY.get(registry)
        if insight is None:
            insight = Insight(getattr(registry, "session_options", None))
            _INSIGHT_BY_REGISTRY[registry] = insight
        return insight


async def get_filters(core: Any, request: inference_pb2.FiltersRequest) -> inference_pb2.FiltersResponse:
    """The `GetFilters` RPC over a `ServingCore`."""
    loaded = core.registry.get(request.model, request.version)
    return await filters_rpc(insight_for(core), loaded, request, core.executor)


async def explain(
    core: Any, request: inference_pb2.ExplainRequest, deadline: float | None = None
) -> inference_pb2.ExplainResponse:
    """The `Explain` RPC over a `ServingCore`; `deadline` is event-loop time (None: the call's own)."""
    loaded = core.registry.get(request.model, request.version)
    return await explain_rpc(
        insight_for(core), loaded, request, core.limits, core.executor, deadline, core.decode_executor
    )


async def filters_rpc(
    insight: Insight, loaded: Any, request: inference_pb2.FiltersRequest, executor: Executor | None = None
) -> inference_pb2.FiltersResponse:
    """`GetFilters` for a `registry.LoadedModel`; reading the ONNX file the first time runs in `executor`."""
    loop = asyncio.get_running_loop()
    result = await loop.run_in_executor(
        executor,
        lambda: insight.get_filters(
            loaded.model, request.layer, mosaic=request.mosaic, input_channel=request.input_channel
        ),
    )
    response = inference_pb2.FiltersResponse()
    fill_filters_response(result, response)
    return response


async def explain_rpc(
    insight: Insight,
    loaded: Any,
    request: inference_pb2.ExplainRequest,
    limits: Any,
    executor: Executor | None = None,
    deadline: float | None = None,
    decode_executor: Executor | None = None,
) -> inference_pb2.ExplainResponse:
    """`Explain` for a `registry.LoadedModel`: the image decoded as for Classify, the occluded copies
    through its dynamic batcher chunk by chunk; `limits` is an `inference.RequestLimits`, `deadline` is
    event-loop time (each chunk carries it, so an expired explanation stops being computed)."""
    from cnnserve.serving.core.inputs import prepare_batch

    options = explain_options_from_request(request)
    batch = await prepare_batch([wire.image_input(request.image)], loaded.spec, limits, decode_executor)

    async def classify(chunk: np.ndarray) -> np.ndarray:
        # A chunk is a ready-made batch: it may compute beside another one rather than wait to merge.
        return await loaded.batcher.submit(chunk, deadline, bulk=len(chunk) > 1)

    settings = loaded.batcher.settings
    result = await insight.explain_async(
        loaded.model,
        batch[0],
        options,
        classify,
        settings.max_batch_size,
        executor,
        chunks_in_flight=settings.max_concurrent_batches if settings.enabled else 1,
    )
    response = inference_pb2.ExplainResponse()
    fill_explain_response(result, response)
    return response
