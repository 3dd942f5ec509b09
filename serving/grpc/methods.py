"""cnnserve.v1's methods on its messages, whatever carries them: request message in, response message out.

The gRPC servicer runs them for gRPC calls and the JSON endpoints (`serving/http/json_api.py`) for the same
messages in protobuf's JSON mapping, each between its transport's call hooks, so both answer alike by
construction. Each method translates the request for the data plane, records on the `Call` what the hooks
report (version, images), and translates the result back. No gRPC here, only the generated messages.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message

from cnnserve.protos import inference_pb2
from cnnserve.serving.core.calls import Call
from cnnserve.serving.core.dataplane import DataPlane
from cnnserve.serving.grpc import converters

# A method: (request, call, deadline in event-loop time or None) -> response.
Method = Callable[[Any, Call, float | None], Awaitable[Message]]


@dataclass(frozen=True)
class MethodSpec:
    name: str  # the RPC's name: the call hooks' `Call.method` (metrics, scopes)
    request_type: type[Message]
    handler: str  # the InferenceMethods attribute that runs it


SPECS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec("Classify", inference_pb2.ClassifyRequest, "classify"),
        MethodSpec("GetActivations", inference_pb2.ActivationsRequest, "activations"),
        MethodSpec("ListModels", inference_pb2.ListModelsRequest, "list_models"),
        MethodSpec("GetModelMetadata", inference_pb2.ModelMetadataRequest, "metadata"),
        MethodSpec("GetFilters", inference_pb2.FiltersRequest, "filters"),
        MethodSpec("Explain", inference_pb2.ExplainRequest, "explain"),
    )
}


class InferenceMethods:
    """The six cnnserve.v1 methods over a DataPlane."""

    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane

    def method(self, name: str) -> Method:
        """The method of an RPC named in SPECS."""
        method: Method = getattr(self, SPECS[name].handler)
        return method

    async def classify(
        self, request: inference_pb2.ClassifyRequest, call: Call, deadline: float | None
    ) -> inference_pb2.ClassifyResponse:
        images = converters.image_inputs(request.images)
        result = await self.dataplane.classify(
            request.model, request.version, images, request.top_k, deadline
        )
        call.version, call.images = result.model.version, len(images)
        return converters.classify_response(result)

    async def activations(
        self, request: inference_pb2.ActivationsRequest, call: Call, deadline: float | None
    ) -> inference_pb2.ActivationsResponse:
        images = converters.image_inputs(request.images)
        result = await self.dataplane.activations(
            request.model, request.version, images, list(request.layers), mosaic=request.mosaic
        )
        call.version, call.images = result.model.version, len(images)
        return converters.activations_response(result)

    async def list_models(
        self, request: inference_pb2.ListModelsRequest, call: Call, deadline: float | None
    ) -> inference_pb2.ListModelsResponse:
        return converters.list_models_response(self.dataplane.models())

    async def metadata(
        self, request: inference_pb2.ModelMetadataRequest, call: Call, deadline: float | None
    ) -> inference_pb2.ModelMetadataResponse:
        meta = self.dataplane.metadata(request.model, request.version)
        call.version = meta.model.version
        return converters.metadata_response(meta)

    async def filters(
        self, request: inference_pb2.FiltersRequest, call: Call, deadline: float | None
    ) -> inference_pb2.FiltersResponse:
        result = await self.dataplane.filters(
            request.model, request.version, request.layer, request.input_channel, mosaic=request.mosaic
        )
        call.version = result.version
        return converters.filters_response(result)

    async def explain(
        self, request: inference_pb2.ExplainRequest, call: Call, deadline: float | None
    ) -> inference_pb2.ExplainResponse:
        options = converters.explain_options(request)
        image = converters.image_input(request.image)
        result = await self.dataplane.explain(request.model, request.version, image, options, deadline)
        call.version, call.images = result.version, 1
        return converters.explain_response(result)
