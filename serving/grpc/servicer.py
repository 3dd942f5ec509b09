"""The cnnserve.v1 gRPC face of the data plane: translate protos, call the data plane, translate back.

Nothing else happens here: the call hooks (drain, metrics, ...) and the status mapping run in
`interceptors.CallRunner` for every RPC, and the work is the data plane's.
"""

from __future__ import annotations

from typing import Any

import grpc

from cnnserve.protos import inference_pb2, inference_pb2_grpc
from cnnserve.serving.core.calls import Call
from cnnserve.serving.core.dataplane import DataPlane
from cnnserve.serving.grpc import converters
from cnnserve.serving.grpc.interceptors import CallRunner, deadline

PROTOCOL = "cnnserve.v1"


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    """cnnserve.v1.InferenceService over a DataPlane."""

    def __init__(self, dataplane: DataPlane, runner: CallRunner) -> None:
        self.dataplane = dataplane
        self.runner = runner

    async def Classify(
        self, request: inference_pb2.ClassifyRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        async def handle(call: Call) -> inference_pb2.ClassifyResponse:
            images = converters.image_inputs(request.images)
            result = await self.dataplane.classify(
                request.model, request.version, images, request.top_k, deadline(context)
            )
            call.version, call.images = result.model.version, len(images)
            return converters.classify_response(result)

        return await self.runner.run(context, "Classify", request.model, handle)

    async def GetActivations(
        self, request: inference_pb2.ActivationsRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        async def handle(call: Call) -> inference_pb2.ActivationsResponse:
            images = converters.image_inputs(request.images)
            result = await self.dataplane.activations(
                request.model, request.version, images, list(request.layers), mosaic=request.mosaic
            )
            call.version, call.images = result.model.version, len(images)
            return converters.activations_response(result)

        return await self.runner.run(context, "GetActivations", request.model, handle)

    async def ListModels(
        self, request: inference_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        async def handle(call: Call) -> inference_pb2.ListModelsResponse:
            return converters.list_models_response(self.dataplane.models())

        return await self.runner.run(context, "ListModels", "", handle)

    async def GetModelMetadata(
        self, request: inference_pb2.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        async def handle(call: Call) -> inference_pb2.ModelMetadataResponse:
            meta = self.dataplane.metadata(request.model, request.version)
            call.version = meta.model.version
            return converters.metadata_response(meta)

        return await self.runner.run(context, "GetModelMetadata", request.model, handle)

    async def GetFilters(
        self, request: inference_pb2.FiltersRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        async def handle(call: Call) -> inference_pb2.FiltersResponse:
            result = await self.dataplane.filters(
                request.model, request.version, request.layer, request.input_channel, mosaic=request.mosaic
            )
            call.version = result.version
            return converters.filters_response(result)

        return await self.runner.run(context, "GetFilters", request.model, handle)

    async def Explain(self, request: inference_pb2.ExplainRequest, context: grpc.aio.ServicerContext) -> Any:
        async def handle(call: Call) -> inference_pb2.ExplainResponse:
            options = converters.explain_options(request)
            image = converters.image_input(request.image)
            result = await self.dataplane.explain(
                request.model, request.version, image, options, deadline(context)
            )
            call.version, call.images = result.version, 1
            return converters.explain_response(result)

        return await self.runner.run(context, "Explain", request.model, handle)


class EchoServicer(inference_pb2_grpc.InferenceServiceServicer):
    """Answers Classify without any work (one fixed prediction per image): the transport's own limit."""

    def __init__(self) -> None:
        self.stopping = False
        self._prediction = inference_pb2.Classification(
            predictions=[inference_pb2.Prediction(label="echo", index=0, score=1.0)]
        )

    async def Classify(
        self, request: inference_pb2.ClassifyRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        if self.stopping:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
        return inference_pb2.ClassifyResponse(
            model=request.model, version=1, results=[self._prediction] * len(request.images)
        )
