"""The Open Inference Protocol's HTTP/REST endpoints (KServe v2 with Triton's extensions) over the data plane.

    GET  /v2/health/live                          200 while the process answers
    GET  /v2/health/ready                         200 once a model can serve, else 503
    GET  /v2                                      server metadata (name, version, extensions)
    GET  /v2/models/{m}[/versions/{v}]            model metadata (inputs, outputs, versions)
    GET  /v2/models/{m}[/versions/{v}]/ready      200 or 503
    GET  /v2/models/{m}[/versions/{v}]/config     Triton's model configuration (JSON)
    GET  /v2/models[/{m}[/versions/{v}]]/stats    statistics
    POST /v2/models/{m}[/versions/{v}]/infer      inference: JSON, or JSON + binary tensor data
    POST /v2/repository/index                     every model and version, with its state
    POST /v2/repository/models/{m}/load|unload    explicit model control (unload drains its batches)

Each request runs between the server's call hooks (drain, metrics, statistics, and whatever else the server
adds, such as authentication or tracing, for every protocol at once); errors become `{"error": "..."}`
with the HTTP status the serving error tree gives (`errors.status_of`), the same status as over gRPC.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from cnnserve.serving.core import oip
from cnnserve.serving.core.calls import Call, CallHooks
from cnnserve.serving.core.dataplane import DataPlane
from cnnserve.serving.errors import Status, status_of
from cnnserve.serving.http import codec
from cnnserve.serving.http.calls import run_call
from cnnserve.serving.http.server import HttpRequest, HttpResponse, Router, error_json, json_response
from cnnserve.serving.observability.statistics import Duration, VersionStatistics
from cnnserve.serving.observability.statistics_exchange import StatisticsExchange
from cnnserve.serving.security.gate import RefusedError

LOG = logging.getLogger(__name__)

PROTOCOL = "v2-http"
EMPTY = HttpResponse(200, b"")
NOT_READY = HttpResponse(503, b"")

Params = Mapping[str, str]


def error_response(error: Exception) -> HttpResponse:
    """The one mapping of an error to an HTTP answer: the status the error tree gives, its message."""
    status, message = status_of(error)
    if status is Status.INTERNAL:
        LOG.error("HTTP request failed", exc_info=error)
    if isinstance(error, RefusedError):  # 401 says how to authenticate (WWW-Authenticate), 429 when to retry
        return json_response(status.http_status, {"error": message}, tuple(error.http_headers.items()))
    return error_json(status.http_status, message)


class OipHttpEndpoints:
    """The endpoints above over one DataPlane, as a Router for serving/http/server.py."""

    def __init__(self, dataplane: DataPlane, hooks: CallHooks, statistics: StatisticsExchange) -> None:
        self.dataplane = dataplane
        self.hooks = hooks
        self.statistics = statistics

    def router(self) -> Router:
        router = Router()
        router.add("GET", "/v2/health/live", self.live)
        router.add("GET", "/v2/health/ready", self.ready)
        router.add("GET", "/v2", self.server_metadata)
        router.add("GET", "/v2/models/stats", self.stats)
        for base in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
            router.add("GET", base, self.model_metadata)
            router.add("GET", f"{base}/ready", self.model_ready)
            router.add("GET", f"{base}/config", self.model_config)
            router.add("GET", f"{base}/stats", self.stats)
            router.add("POST", f"{base}/infer", self.infer)
        router.add("POST", "/v2/repository/index", self.repository_index)
        router.add("POST", "/v2/repository/models/{model}/load", self.load)
        router.add("POST", "/v2/repository/models/{model}/unload", self.unload)
        return router

    async def _run(
        self,
        request: HttpRequest,
        method: str,
        model: str,
        handler: Callable[[Call], Awaitable[HttpResponse]],
    ) -> HttpResponse:
        """One call between the call hooks; what the handler raises goes back to the server's mapping."""
        return await run_call(self.hooks, PROTOCOL, request, method, model, handler)

    # -- health and metadata --------------------------------------------------------------------------

    async def live(self, request: HttpRequest, params: Params) -> HttpResponse:
        return EMPTY

    async def ready(self, request: HttpRequest, params: Params) -> HttpResponse:
        return EMPTY if oip.server_ready(self.dataplane.registry) else NOT_READY

    async def server_metadata(self, request: HttpRequest, params: Params) -> HttpResponse:
        metadata = oip.server_metadata()
        return json_response(
            200, {"name": metadata.name, "version": metadata.version, "extensions": list(metadata.extensions)}
        )

    async def model_metadata(self, request: HttpRequest, params: Params) -> HttpResponse:
        async def handle(call: Call) -> HttpResponse:
            loaded = oip.resolve(self.dataplane.registry, params["model"], params.get("version", ""))
            call.version = loaded.version
            metadata = oip.model_metadata(loaded, self.dataplane.registry.statuses().get(loaded.name, []))
            return json_response(
                200,
                {
                    "name": metadata.name,
                    "versions": list(metadata.versions),
                    "platform": metadata.platform,
                    "inputs": codec.tensor_metadata(metadata.inputs),
                    "outputs": codec.tensor_metadata(metadata.outputs),
                },
            )

        return await self._run(request, "ModelMetadata", params["model"], handle)

    async def model_ready(self, request: HttpRequest, params: Params) -> HttpResponse:
        ready = oip.model_ready(self.dataplane.registry, params["model"], params.get("version", ""))
        return EMPTY if ready else NOT_READY

    async def model_config(self, request: HttpRequest, params: Params) -> HttpResponse:
        async def handle(call: Call) -> HttpResponse:
            loaded = oip.resolve(self.dataplane.registry, params["model"], params.get("version", ""))
            call.version = loaded.version
            return json_response(200, oip.model_config(loaded))

        return await self._run(request, "ModelConfig", params["model"], handle)

    async def stats(self, request: HttpRequest, params: Params) -> HttpResponse:
        model = params.get("model", "")

        async def handle(call: Call) -> HttpResponse:
            book = await self.statistics.snapshot()
            selected = oip.statistics(self.dataplane.registry, book, model, params.get("version", ""))
            return json_response(200, {"model_stats": [statistics_json(s) for s in selected]})

        return await self._run(request, "ModelStatistics", model, handle)

    # -- inference -------------------------------------------------------------------------------------

    async def infer(self, request: HttpRequest, params: Params) -> HttpResponse:
        model = params["model"]

        async def handle(call: Call) -> HttpResponse:
            oip.resolve(self.dataplane.registry, model, params.get("version", ""))  # 404/503 before 400
            parsed = codec.parse_infer(model, params.get("version", ""), request.body, request.headers)
            loaded, result = await oip.infer(self.dataplane, parsed.request)
            call.version, call.images = loaded.version, result.images
            body, header_length = codec.infer_response(result, parsed.binary_outputs)
            if header_length is None:
                return HttpResponse(200, body)
            return HttpResponse(
                200,
                body,
                content_type=codec.BINARY_TYPE,
                headers=((codec.HEADER_LENGTH_OUT, str(header_length)),),
            )

        return await self._run(request, "ModelInfer", model, handle)

    # -- the model repository ----------------------------------------------------------------------------

    async def repository_index(self, request: HttpRequest, params: Params) -> HttpResponse:
        async def handle(call: Call) -> HttpResponse:
            ready = codec.json_object(request.body, "repository index").get("ready", False)
            entries = oip.repository_index(self.dataplane.registry, ready is True)
            return json_response(
                200,
                [
                    {"name": e.name, "version": e.version, "state": e.state, "reason": e.reason}
                    for e in entries
                ],
            )

        return await self._run(request, "RepositoryIndex", "", handle)

    async def load(self, request: HttpRequest, params: Params) -> HttpResponse:
        async def handle(call: Call) -> HttpResponse:
            codec.json_object(request.body, "load")
            await self.dataplane.registry.load_model(params["model"])
            return EMPTY

        return await self._run(request, "RepositoryModelLoad", params["model"], handle)

    async def unload(self, request: HttpRequest, params: Params) -> HttpResponse:
        async def handle(call: Call) -> HttpResponse:
            codec.json_object(request.body, "unload")
            await self.dataplane.registry.unload_model(params["model"])
            return EMPTY

        return await self._run(request, "RepositoryModelUnload", params["model"], handle)


def _duration(duration: Duration) -> dict[str, int]:
    return {"count": duration.count, "ns": duration.ns}


def statistics_json(stats: VersionStatistics) -> dict[str, Any]:
    return {
        "name": stats.name,
        "version": str(stats.version),
        "last_inference": stats.last_inference_ms,
        "inference_count": stats.inference_count,
        "execution_count": stats.execution_count,
        # Preparing a batch's input and splitting its output are timed with the inference itself; the
        # counts still match, as Triton's clients (perf_analyzer) require.
        "inference_stats": {
            "success": _duration(stats.success),
            "fail": _duration(stats.fail),
            "queue": _duration(stats.queue),
            "compute_input": {"count": stats.compute_infer.count, "ns": 0},
            "compute_infer": _duration(stats.compute_infer),
            "compute_output": {"count": stats.compute_infer.count, "ns": 0},
        },
        "batch_stats": [
            {
                "batch_size": size,
                "compute_input": {"count": duration.count, "ns": 0},
                "compute_infer": _duration(duration),
                "compute_output": {"count": duration.count, "ns": 0},
            }
            for size, duration in sorted(stats.batches.items())
        ],
    }


class EchoHttpEndpoints:
    """POST .../infer answered without any work (zero probabilities, ten per image), with the health
    endpoints: the HTTP transport's own limit for the benchmarks."""

    def router(self) -> Router:
        router = Router()
        router.add("GET", "/v2/health/live", self.health)
        router.add("GET", "/v2/health/ready", self.health)
        router.add("POST", "/v2/models/{model}/infer", self.infer)
        return router

    async def health(self, request: HttpRequest, params: Params) -> HttpResponse:
        return EMPTY

    async def infer(self, request: HttpRequest, params: Params) -> HttpResponse:
        parsed = codec.parse_infer(params["model"], "", request.body, request.headers)
        count = parsed.request.inputs[0].shape[0] if parsed.request.inputs[0].shape else 1
        result = oip.echo_result(params["model"], parsed.request.id, count)
        body, header_length = codec.infer_response(result, parsed.binary_outputs)
        if header_length is None:
            return HttpResponse(200, body)
        return HttpResponse(
            200,
            body,
            content_type=codec.BINARY_TYPE,
            headers=((codec.HEADER_LENGTH_OUT, str(header_length)),),
        )
