"""The Open Inference Protocol's gRPC service (`inference.GRPCInferenceService`) over the data plane.

A second servicer beside cnnserve.v1's, on the same server, registry and batchers: ModelInfer reaches the
batcher Classify feeds, so both protocols' requests for one model merge into the same batches. Handlers
only translate (oip_converters) and call the core (core.oip); the call hooks and the one status mapping
run in `interceptors.CallRunner`, as for every RPC of the server.
"""

from __future__ import annotations

from typing import Any

import grpc

from cnnserve.protos import oip_pb2, oip_pb2_grpc
from cnnserve.serving.core import oip
from cnnserve.serving.core.calls import Call
from cnnserve.serving.core.dataplane import DataPlane
from cnnserve.serving.grpc import oip_converters as convert
from cnnserve.serving.grpc.interceptors import CallRunner, deadline
from cnnserve.serving.observability.statistics_exchange import StatisticsExchange

PROTOCOL = "v2-grpc"
SERVICE_NAME = oip_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name


class OipServicer(oip_pb2_grpc.GRPCInferenceServiceServicer):
    """inference.GRPCInferenceService over a DataPlane; `ready()` says whether the server takes requests."""

    def __init__(self, dataplane: DataPlane, runner: CallRunner, statistics: StatisticsExchange) -> None:
        self.dataplane = dataplane
        self.runner = runner
        self.statistics = statistics

    async def ServerLive(self, request: oip_pb2.ServerLiveRequest, context: grpc.aio.ServicerContext) -> Any:
        return oip_pb2.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: oip_pb2.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        return oip_pb2.ServerReadyResponse(ready=oip.server_ready(self.dataplane.registry))

    async def ModelReady(self, request: oip_pb2.ModelReadyRequest, context: grpc.aio.ServicerContext) -> Any:
        async def handle(call: Call) -> oip_pb2.ModelReadyResponse:
            return oip_pb2.ModelReadyResponse(
                ready=oip.model_ready(self.dataplane.registry, request.name, request.version)
            )

        return await self.runner.run(context, "ModelReady", request.name, handle)

    async def ServerMetadata(
        self, request: oip_pb2.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        metadata = oip.server_metadata()
        return oip_pb2.ServerMetadataResponse(
            name=metadata.name, version=metadata.version, extensions=metadata.extensions
        )

    async def ModelMetadata(
        self, request: oip_pb2.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        async def handle(call: Call) -> oip_pb2.ModelMetadataResponse:
            loaded = oip.resolve(self.dataplane.registry, request.name, request.version)
            call.version = loaded.version
            statuses = self.dataplane.registry.statuses().get(loaded.name, [])
            return convert.metadata_response(oip.model_metadata(loaded, statuses))

        return await self.runner.run(context, "ModelMetadata", request.name, handle)

    async def ModelConfig(
        self, request: oip_pb2.ModelConfigRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        async def handle(call: Call) -> oip_pb2.ModelConfigResponse:
            loaded = oip.resolve(self.dataplane.registry, request.name, request.version)
            call.version = loaded.version
            return convert.config_response(oip.model_config(loaded))

        return await self.runner.run(context, "ModelConfig", request.name, handle)

    async def ModelInfer(self, request: oip_pb2.ModelInferRequest, context: grpc.aio.ServicerContext) -> Any:
        async def handle(call: Call) -> oip_pb2.ModelInferResponse:
            loaded, result = await oip.infer(
                self.dataplane, convert.infer_request(request), deadline(context)
            )
            call.version, call.images = loaded.version, result.images
            return convert.infer_response(result)

        return await self.runner.run(context, "ModelInfer", request.model_name, handle)

    async def ModelStatistics(
        self, request: oip_pb2.ModelStatisticsRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        async def handle(call: Call) -> oip_pb2.ModelStatisticsResponse:
            book = await self.statistics.snapshot()
            selected = oip.statistics(self.dataplane.registry, book, request.name, request.version)
            return convert.statistics_response(selected)

        return await self.runner.run(context, "ModelStatistics", request.name, handle)

    async def RepositoryIndex(
        self, request: oip_pb2.RepositoryIndexRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        async def handle(call: Call) -> oip_pb2.RepositoryIndexResponse:
            entries = oip.repository_index(self.dataplane.registry, request.ready)
            return convert.repository_index_response(entries)

        return await self.runner.run(context, "RepositoryIndex", "", handle)

    async def RepositoryModelLoad(
        self, request: oip_pb2.RepositoryModelLoadRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        async def handle(call: Call) -> oip_pb2.RepositoryModelLoadResponse:
            await self.dataplane.registry.load_model(request.model_name)
            return oip_pb2.RepositoryModelLoadResponse()

        return await self.runner.run(context, "RepositoryModelLoad", request.model_name, handle)

    async def RepositoryModelUnload(
        self, request: oip_pb2.RepositoryModelUnloadRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        async def handle(call: Call) -> oip_pb2.RepositoryModelUnloadResponse:
            await self.dataplane.registry.unload_model(request.model_name)
            return oip_pb2.RepositoryModelUnloadResponse()

        return await self.runner.run(context, "RepositoryModelUnload", request.model_name, handle)


class OipEchoServicer(oip_pb2_grpc.GRPCInferenceServiceServicer):
    """Answers ModelInfer without any work (zero probabilities, ten classes per image): the transport's
    own limit for the benchmarks, with the same response size as a real answer."""

    def __init__(self) -> None:
        self.stopping = False
        self._answers: dict[int, bytes] = {}

    async def ServerLive(self, request: oip_pb2.ServerLiveRequest, context: grpc.aio.ServicerContext) -> Any:
        return oip_pb2.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: oip_pb2.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        return oip_pb2.ServerReadyResponse(ready=not self.stopping)

    async def ModelInfer(self, request: oip_pb2.ModelInferRequest, context: grpc.aio.ServicerContext) -> Any:
        if self.stopping:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
        count = request.inputs[0].shape[0] if request.inputs and request.inputs[0].shape else 1
        raw = self._answers.get(count)
        if raw is None:
            raw = self._answers[count] = bytes(count * 10 * 4)
        response = oip_pb2.ModelInferResponse(model_name=request.model_name, model_version="1", id=request.id)
        response.outputs.add(name=oip.PROBABILITIES, datatype=oip.FP32, shape=(count, 10))
        response.raw_output_contents.append(raw)
        return response
