"""Classify images over the Open Inference Protocol's gRPC service (KServe v2), as any OIP client would.

    with OipGrpcClient("localhost:8500") as client:
        result = client.classify([png_bytes], model="mnist_cnn", top_k=3)

The images go as one BYTES input (encoded, the server decodes them) and the answer comes from the
classification extension; `cnnserve classify --protocol v2` uses it. Errors are `ServerError`s, as from
the cnnserve.v1 client.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType

import grpc

from cnnserve.protos import oip_pb2, oip_pb2_grpc
from cnnserve.serving.core import oip, oip_tensors
from cnnserve.serving.grpc import credentials
from cnnserve.serving.grpc.client import ClassifyResult, Prediction, ServerError
from cnnserve.serving.security.client_credentials import ClientSecurity
from cnnserve.serving.settings import DEFAULT_CLIENT_TIMEOUT_S, DEFAULT_MAX_MESSAGE_BYTES


def classify_request(
    model: str, images: Sequence[bytes], top_k: int, version: int, input_name: str
) -> oip_pb2.ModelInferRequest:
    request = oip_pb2.ModelInferRequest(model_name=model, model_version=str(version) if version else "")
    request.inputs.add(name=input_name, datatype=oip.BYTES, shape=[len(images)])
    request.raw_input_contents.append(oip_tensors.join_bytes(images))
    output = request.outputs.add(name=oip.PROBABILITIES)
    output.parameters["classification"].int64_param = top_k
    return request


def classify_result(model: str, version: str, entries: Sequence[bytes], count: int) -> ClassifyResult:
    """The classification extension's strings ([images, k], row-major) as predictions per image."""
    k = len(entries) // count if count else 0
    predictions = [
        [Prediction(label, index, score) for score, index, label in map(oip.parse_classification, row)]
        for row in (entries[i * k : (i + 1) * k] for i in range(count))
    ]
    return ClassifyResult(model, int(version or 0), predictions)


class OipGrpcClient:
    """A channel to one server's inference.GRPCInferenceService; calls raise ServerError on an error."""

    def __init__(
        self,
        address: str,
        timeout: float = DEFAULT_CLIENT_TIMEOUT_S,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        security: ClientSecurity | None = None,
    ) -> None:
        """`security`: TLS, a client certificate and a bearer token for a secured server."""
        self.timeout = timeout
        self._metadata = None if security is None else security.metadata() or None
        self.channel = credentials.channel(
            address,
            security,
            options=[
                ("grpc.max_send_message_length", max_message_bytes),
                ("grpc.max_receive_message_length", max_message_bytes),
            ],
        )
        self.stub = oip_pb2_grpc.GRPCInferenceServiceStub(self.channel)
        self._input_names: dict[str, str] = {}

    def __enter__(self) -> OipGrpcClient:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def _call(self, method: grpc.UnaryUnaryMultiCallable, request: object) -> object:
        try:
            return method(request, timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as error:
            raise ServerError(error.code(), error.details() or "") from None

    def input_name(self, model: str, version: int = 0) -> str:
        """The model's input name, from its metadata (asked once per model)."""
        if model not in self._input_names:
            request = oip_pb2.ModelMetadataRequest(name=model, version=str(version) if version else "")
            metadata = self._call(self.stub.ModelMetadata, request)
            assert isinstance(metadata, oip_pb2.ModelMetadataResponse)
            self._input_names[model] = metadata.inputs[0].name
        return self._input_names[model]

    def classify(
        self, images: Sequence[bytes], model: str, top_k: int = 1, version: int = 0
    ) -> ClassifyResult:
        """The top_k classes of each encoded image (PNG, JPEG, ...), best first."""
        request = classify_request(model, images, top_k, version, self.input_name(model, version))
        response = self._call(self.stub.ModelInfer, request)
        assert isinstance(response, oip_pb2.ModelInferResponse)
        entries = oip_tensors.split_bytes(
            oip.PROBABILITIES, response.raw_output_contents[0], len(images) * top_k
        )
        return classify_result(response.model_name, response.model_version, entries, len(images))
