"""The cnnserve.v1 gRPC face of the data plane: each RPC runs its method (methods.py) between the call hooks.

Nothing else happens here: the call hooks (drain, metrics, ...) and the status mapping run in
`interceptors.CallRunner` for every RPC, the translation and the work are `InferenceMethods`'s, shared with
the JSON endpoints.
"""

from __future__ import annotations

from typing import Any

import grpc

from cnnserve.protos import inference_pb2, inference_pb2_grpc
from cnnserve.serving.core.dataplane import DataPlane
from cnnserve.serving.grpc.interceptors import CallRunner, deadline
from cnnserve.serving.grpc.methods import InferenceMethods

PROTOCOL = "cnnserve.v1"


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    """cnnserve.v1.InferenceService over a DataPlane."""

    def __init__(self, dataplane: DataPlane, runner: CallRunner) -> None:
        self.dataplane = dataplane
        self.methods = InferenceMethods(dataplane)
        self.runner = runner

    async def _run(self, name: str, model: str, request: Any, context: grpc.aio.ServicerContext) -> Any:
        method, until = self.methods.method(name), deadline(context)
        return await self.runner.run(context, name, model, lambda call: method(request, call, until))

    async def Classify(
        self, request: inference_pb2.ClassifyRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        return await self._run("Classify", request.model, request, context)

    async def GetActivations(
        self, request: inference_pb2.ActivationsRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        return await self._run("GetActivations", request.model, request, context)

    async def ListModels(
        self, request: inference_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        return await self._run("ListModels", "", request, context)

    async def GetModelMetadata(
        self, request: inference_pb2.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        return await self._run("GetModelMetadata", request.model, request, context)

    async def GetFilters(
        self, request: inference_pb2.FiltersRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        return await self._run("GetFilters", request.model, request, context)

    async def Explain(self, request: inference_pb2.ExplainRequest, context: grpc.aio.ServicerContext) -> Any:
        return await self._run("Explain", request.model, request, context)


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
