"""The gRPC face of the serving core: translate protos, call the core, map errors to status codes.

`status_for` is the one place that decides which status code an error gets. `GetFilters` and `Explain`
delegate to `cnnserve.serving.insight.explainer` (`get_filters(core, request)` / `explain(core, request)`,
coroutines returning the response message) when that module exists; until then they answer UNIMPLEMENTED.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import time
from collections.abc import Awaitable, Callable
from types import ModuleType
from typing import Any

import grpc

from cnnserve.protos import inference_pb2, inference_pb2_grpc
from cnnserve.serving.core import inputs as inference
from cnnserve.serving.grpc import converters as wire
from cnnserve.serving.errors import (
    DeadlineExpiredError,
    InvalidRequestError,
    LayerNotFoundError,
    ModelUnavailableError,
    QueueFullError,
    ShuttingDownError,
)
from cnnserve.serving.core.inputs import ServingCore
from cnnserve.serving.observability.metrics import ServingMetrics
from cnnserve.serving.insight.rendering import activation_mosaic_png
from cnnserve.serving.model.repository import ModelNotFoundError

LOG = logging.getLogger(__name__)

INSIGHT_SERVICE = "cnnserve.serving.insight.explainer"
OTHER_MODEL = "_other"  # metrics label for names that are not in the repository (bounded cardinality)

_STATUS: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (ModelNotFoundError, grpc.StatusCode.NOT_FOUND),
    (LayerNotFoundError, grpc.StatusCode.NOT_FOUND),
    (InvalidRequestError, grpc.StatusCode.INVALID_ARGUMENT),
    (QueueFullError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (DeadlineExpiredError, grpc.StatusCode.DEADLINE_EXCEEDED),
    (ModelUnavailableError, grpc.StatusCode.UNAVAILABLE),
    (ShuttingDownError, grpc.StatusCode.UNAVAILABLE),
    (NotImplementedError, grpc.StatusCode.UNIMPLEMENTED),
)


def _insight_status() -> tuple[tuple[type[BaseException], grpc.StatusCode], ...]:
    """The insight module's error types, mapped the way its docstrings promise."""
    try:
        from cnnserve.serving.insight.filters import filters as insight
    except ImportError:
        return ()
    table = (
        ("UnknownLayerError", grpc.StatusCode.NOT_FOUND),
        ("LayerHasNoWeightsError", grpc.StatusCode.INVALID_ARGUMENT),
        ("InvalidInsightRequest", grpc.StatusCode.INVALID_ARGUMENT),
        ("GradCamUnavailableError", grpc.StatusCode.FAILED_PRECONDITION),
        ("WeightsReadError", grpc.StatusCode.INTERNAL),
    )
    return tuple((getattr(insight, name), code) for name, code in table if hasattr(insight, name))


STATUS_TABLE = _STATUS + _insight_status()


def status_for(error: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and message a client gets for an error raised by the core."""
    for kind, code in STATUS_TABLE:
        if isinstance(error, kind):
            return code, str(error)
    return grpc.StatusCode.INTERNAL, f"internal error: {type(error).__name__}: {error}"


def _load_insight_service() -> ModuleType | None:
    try:
        return importlib.import_module(INSIGHT_SERVICE)
    except ModuleNotFoundError as error:
        if error.name == INSIGHT_SERVICE:
            return None
        raise


Handler = Callable[[Any, grpc.aio.ServicerContext], Awaitable[tuple[Any, int]]]


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    """cnnserve.v1.InferenceService over a ServingCore."""

    def __init__(self, core: ServingCore, metrics: ServingMetrics) -> None:
        self.core = core
        self.metrics = metrics
        self.shutting_down = False
        self.in_flight = 0
        self._idle: asyncio.Event | None = None
        self.insight = _load_insight_service()
        self._children: dict[tuple[str, str], tuple[Any, Any, Any]] = {}

    # -- one wrapper for every RPC: refusal while stopping, metrics, the status mapping ---------------

    def _metric_children(self, model: str, rpc: str) -> tuple[Any, Any, Any]:
        key = (model, rpc)
        children = self._children.get(key)
        if children is None:
            m = self.metrics
            children = (
                m.requests.labels(model, rpc),
                m.latency.labels(model, rpc),
                m.images.labels(model, rpc),
            )
            self._children[key] = children
        return children

    async def _call(self, rpc: str, request: Any, context: grpc.aio.ServicerContext, handler: Handler) -> Any:
        start = time.perf_counter()
        name = getattr(request, "model", "")
        model = name if name in self.core.registry.known else (OTHER_MODEL if name else "")
        requests, latency, images = self._metric_children(model, rpc)
        requests.inc()
        self.in_flight += 1
        try:
            if self.shutting_down:
                raise ShuttingDownError("the server is shutting down; retry on another instance")
            response, count = await handler(request, context)
        except Exception as error:
            code, message = status_for(error)
            if code == grpc.StatusCode.INTERNAL:
                LOG.exception("%s for model %r failed", rpc, name)
            self.metrics.failures.labels(model, rpc, code.name).inc()
            latency.observe(time.perf_counter() - start)
            await context.abort(code, message)
        finally:
            self.in_flight -= 1
            if self.in_flight == 0 and self._idle is not None:
                self._idle.set()
        latency.observe(time.perf_counter() - start)
        if count:
            images.inc(count)
        return response

    async def drain(self, timeout: float) -> bool:
        """Refuse new calls (UNAVAILABLE) and wait for the calls in flight; False if some outlived timeout."""
        self.shutting_down = True
        if self.in_flight == 0:
            return True
        self._idle = asyncio.Event()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            LOG.warning("%d call(s) still in flight after %.0f s; cancelling them", self.in_flight, timeout)
            return False
        return True

    @staticmethod
    def _deadline(context: grpc.aio.ServicerContext) -> float | None:
        remaining = context.time_remaining()
        return None if remaining is None else asyncio.get_running_loop().time() + remaining

    # -- RPCs ---------------------------------------------------------------------------------------

    async def Classify(
        self, request: inference_pb2.ClassifyRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        return await self._call("Classify", request, context, self._classify)

    async def _classify(
        self, request: inference_pb2.ClassifyRequest, context: grpc.aio.ServicerContext
    ) -> tuple[inference_pb2.ClassifyResponse, int]:
        core = self.core
        loaded = core.registry.get(request.model, request.version)
        images = wire.image_inputs(request.images)
        result = await inference.classify(
            loaded, images, request.top_k, core.limits, core.decode_executor, self._deadline(context)
        )
        response = inference_pb2.ClassifyResponse(model=loaded.name, version=loaded.version)
        wire.fill_classifications(response, result, loaded.labels)
        return response, len(images)

    async def GetActivations(
        self, request: inference_pb2.ActivationsRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        return await self._call("GetActivations", request, context, self._activations)

    async def _activations(
        self, request: inference_pb2.ActivationsRequest, context: grpc.aio.ServicerContext
    ) -> tuple[inference_pb2.ActivationsResponse, int]:
        core = self.core
        loaded = core.registry.get(request.model, request.version)
        images = wire.image_inputs(request.images)
        outputs = await inference.activations(
            loaded, images, list(request.layers), core.limits, core.executor, core.decode_executor
        )

        def build() -> list[inference_pb2.LayerActivation]:
            return [
                inference_pb2.LayerActivation(
                    layer=name,
                    activations=wire.tensor_proto(values),
                    mosaic_png=activation_mosaic_png(values[0]) if request.mosaic else b"",
                )
                for name, values in outputs.items()
            ]

        layers = await asyncio.get_running_loop().run_in_executor(core.executor, build)
        return (
            inference_pb2.ActivationsResponse(model=loaded.name, version=loaded.version, layers=layers),
            len(images),
        )

    async def ListModels(
        self, request: inference_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        return await self._call("ListModels", request, context, self._list_models)

    async def _list_models(
        self, request: inference_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> tuple[inference_pb2.ListModelsResponse, int]:
        summaries = [
            inference_pb2.ModelSummary(name=name, versions=wire.version_statuses(statuses))
            for name, statuses in self.core.registry.statuses().items()
        ]
        return inference_pb2.ListModelsResponse(models=summaries), 0

    async def GetModelMetadata(
        self, request: inference_pb2.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        return await self._call("GetModelMetadata", request, context, self._metadata)

    async def _metadata(
        self, request: inference_pb2.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> tuple[inference_pb2.ModelMetadataResponse, int]:
        loaded = self.core.registry.get(request.model, request.version)
        statuses = self.core.registry.statuses().get(loaded.name, [])
        methods: list[str] = []
        if self.insight is not None and hasattr(self.insight, "explain_methods"):
            methods = [m.upper() for m in self.insight.explain_methods(loaded.model)]
        return wire.metadata(loaded, statuses, methods), 0

    async def GetFilters(
        self, request: inference_pb2.FiltersRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        return await self._call("GetFilters", request, context, self._insight_call("get_filters"))

    async def Explain(self, request: inference_pb2.ExplainRequest, context: grpc.aio.ServicerContext) -> Any:
        return await self._call("Explain", request, context, self._insight_call("explain"))

    def _insight_call(self, function: str) -> Handler:
        async def handler(request: Any, context: grpc.aio.ServicerContext) -> tuple[Any, int]:
            implementation = getattr(self.insight, function, None) if self.insight is not None else None
            if implementation is None:
                raise NotImplementedError(
                    f"this server has no {function} implementation ({INSIGHT_SERVICE}.{function} is missing)"
                )
            if function == "explain":
                return await implementation(self.core, request, deadline=self._deadline(context)), 0
            return await implementation(self.core, request), 0

        return handler


class EchoServicer(inference_pb2_grpc.InferenceServiceServicer):
    """Answers Classify without any work (one fixed prediction per image): the transport's own limit."""

    def __init__(self) -> None:
        self.shutting_down = False
        self._prediction = inference_pb2.Classification(
            predictions=[inference_pb2.Prediction(label="echo", index=0, score=1.0)]
        )

    async def drain(self, timeout: float) -> bool:
        self.shutting_down = True
        return True

    async def Classify(
        self, request: inference_pb2.ClassifyRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        if self.shutting_down:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
        return inference_pb2.ClassifyResponse(
            model=request.model, version=1, results=[self._prediction] * len(request.images)
        )
