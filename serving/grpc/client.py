"""The Python client of the cnnserve gRPC service: every RPC, typed results.

    with CnnserveClient("localhost:8500") as client:
        result = client.classify([png_bytes], model="mnist_cnn", top_k=3)
        result.predictions[0][0].label

    # a server with TLS (or mutual TLS) and tokens:
    with CnnserveClient("cnnserve.example.com:8500", tls_ca="ca.crt", token=os.environ["CNNSERVE_TOKEN"]):
        ...

Errors come back as `ServerError` carrying the gRPC status code and the server's message. The command-line
clients, the batch job's remote engine and the benchmarks all use this one client.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cnnserve.protos import inference_pb2, inference_pb2_grpc
from cnnserve.serving.errors import ServingError, Status
from cnnserve.serving.grpc import converters, credentials
from cnnserve.serving.insight.explainer import ExplainOptions, ExplainResult, FiltersResult
from cnnserve.serving.observability.tracing import trace_metadata
from cnnserve.serving.security.client_credentials import ClientSecurity, client_security
from cnnserve.serving.settings import DEFAULT_CLIENT_TIMEOUT_S, DEFAULT_MAX_MESSAGE_BYTES

ImageLike = bytes | np.ndarray | Path


class ServerError(ServingError):
    """The server answered with an error status: `code` (grpc.StatusCode) and `message`."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.status = Status[code.name] if code.name in Status.__members__ else Status.UNKNOWN


@dataclass(frozen=True)
class Prediction:
    label: str
    index: int
    score: float


@dataclass(frozen=True)
class ClassifyResult:
    model: str
    version: int
    predictions: list[list[Prediction]]  # per image, best first


@dataclass(frozen=True)
class LayerActivations:
    layer: str
    values: np.ndarray  # float32 [images, ...layer dims]
    mosaic_png: bytes


@dataclass(frozen=True)
class ActivationsResult:
    model: str
    version: int
    layers: dict[str, LayerActivations]


def _image(image: ImageLike) -> inference_pb2.Image:
    if isinstance(image, Path):
        return inference_pb2.Image(encoded=image.read_bytes())
    return converters.image_proto(image)


# Every cnnserve.v1 call only reads, so a call that found the server UNAVAILABLE (a worker restarting, a
# replica shutting down, a connection lost) is safe to send again: up to 5 attempts, 50 ms backoff doubling
# to 1 s, which rides over a worker restart or a rolling update instead of failing the caller.
RETRY_POLICY = {
    "methodConfig": [
        {
            "name": [{"service": "cnnserve.v1.InferenceService"}],
            "retryPolicy": {
                "maxAttempts": 5,
                "initialBackoff": "0.05s",
                "maxBackoff": "1s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ]
}


def channel_options(max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> list[tuple[str, Any]]:
    """The gRPC channel options of the client: message limits, per-call round robin, retries."""
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        # Per-call round robin over every address the target resolves to, e.g.
        # dns:///cnnserve-headless.NAMESPACE.svc.cluster.local:8500 reaches every ready pod.
        ("grpc.lb_policy_name", "round_robin"),
        ("grpc.enable_retries", 1),
        ("grpc.service_config", json.dumps(RETRY_POLICY)),
    ]


class CnnserveClient:
    """A channel to one server; every call raises ServerError on an error status."""

    def __init__(
        self,
        address: str,
        timeout: float = DEFAULT_CLIENT_TIMEOUT_S,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        security: ClientSecurity | None = None,
        *,
        tls_ca: str | Path | None = None,
        tls_cert: str | Path | None = None,
        tls_key: str | Path | None = None,
        token: str | None = None,
    ) -> None:
        """`security` (what the command-line clients build from their flags), or the files and token
        themselves: `tls_ca` trusts that CA (TLS), `tls_cert`/`tls_key` present a client certificate (mutual
        TLS), `token` is sent as `authorization: Bearer <token>` with every call."""
        self.address = address
        self.timeout = timeout
        if security is None and any(v is not None for v in (tls_ca, tls_cert, tls_key, token)):
            security = client_security(
                tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key, token=token, environ={}
            )
        self.security = security
        self._metadata = () if security is None else security.metadata()
        self.channel = credentials.channel(address, security, options=channel_options(max_message_bytes))
        self.stub = inference_pb2_grpc.InferenceServiceStub(self.channel)
        self.health_stub = health_pb2_grpc.HealthStub(self.channel)

    def __enter__(self) -> CnnserveClient:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def _call(self, method: grpc.UnaryUnaryMultiCallable, request: object, timeout: float | None) -> object:
        # The token (when there is one) and the active span's W3C trace context, so the server's span of
        # this call joins the caller's trace.
        metadata = (*self._metadata, *trace_metadata()) or None
        try:
            return method(request, timeout=self.timeout if timeout is None else timeout, metadata=metadata)
        except grpc.RpcError as error:
            raise ServerError(error.code(), error.details() or "") from None

    def classify(
        self,
        images: Sequence[ImageLike],
        model: str,
        top_k: int = 1,
        version: int = 0,
        timeout: float | None = None,
    ) -> ClassifyResult:
        """The top_k classes of each image (encoded bytes, a file path, or a preprocessed float32 array)."""
        request = inference_pb2.ClassifyRequest(
            model=model, version=version, top_k=top_k, images=[_image(i) for i in images]
        )
        response = self._call(self.stub.Classify, request, timeout)
        assert isinstance(response, inference_pb2.ClassifyResponse)
        return ClassifyResult(
            model=response.model,
            version=response.version,
            predictions=[
                [Prediction(p.label, p.index, p.score) for p in result.predictions]
                for result in response.results
            ],
        )

    def activations(
        self,
        images: Sequence[ImageLike],
        model: str,
        layers: Sequence[str] = (),
        version: int = 0,
        mosaic: bool = False,
        timeout: float | None = None,
    ) -> ActivationsResult:
        """Layer activations (empty `layers` = every activation layer), optionally with PNG mosaics."""
        request = inference_pb2.ActivationsRequest(
            model=model,
            version=version,
            layers=list(layers),
            mosaic=mosaic,
            images=[_image(i) for i in images],
        )
        response = self._call(self.stub.GetActivations, request, timeout)
        assert isinstance(response, inference_pb2.ActivationsResponse)
        return ActivationsResult(
            model=response.model,
            version=response.version,
            layers={
                layer.layer: LayerActivations(
                    layer.layer, converters.tensor_array(layer.activations), layer.mosaic_png
                )
                for layer in response.layers
            },
        )

    def filters(
        self,
        model: str,
        layer: str,
        version: int = 0,
        input_channel: int = -1,
        mosaic: bool = False,
        timeout: float | None = None,
    ) -> FiltersResult:
        """A Conv/Dense layer's kernel (Keras layout) and bias, and with `mosaic` the filter mosaic PNG."""
        request = inference_pb2.FiltersRequest(
            model=model, version=version, layer=layer, mosaic=mosaic, input_channel=input_channel
        )
        response = self._call(self.stub.GetFilters, request, timeout)
        assert isinstance(response, inference_pb2.FiltersResponse)
        return converters.filters_result(response)

    def explain(
        self,
        image: ImageLike,
        model: str,
        options: ExplainOptions | None = None,
        version: int = 0,
        timeout: float | None = None,
    ) -> ExplainResult:
        """A heatmap of what made the model answer a class (occlusion by default; see ExplainOptions)."""
        data = image.read_bytes() if isinstance(image, Path) else image
        request = converters.explain_request(data, model, version, options or ExplainOptions())
        response = self._call(self.stub.Explain, request, timeout)
        assert isinstance(response, inference_pb2.ExplainResponse)
        return converters.explain_result(response)

    def list_models(self, timeout: float | None = None) -> inference_pb2.ListModelsResponse:
        response = self._call(self.stub.ListModels, inference_pb2.ListModelsRequest(), timeout)
        assert isinstance(response, inference_pb2.ListModelsResponse)
        return response

    def metadata(
        self, model: str, version: int = 0, timeout: float | None = None
    ) -> inference_pb2.ModelMetadataResponse:
        request = inference_pb2.ModelMetadataRequest(model=model, version=version)
        response = self._call(self.stub.GetModelMetadata, request, timeout)
        assert isinstance(response, inference_pb2.ModelMetadataResponse)
        return response

    def health(self, service: str = "", timeout: float | None = None) -> str:
        """The health status name of the server ("") or of one model: SERVING, NOT_SERVING, ..."""
        response = self._call(self.health_stub.Check, health_pb2.HealthCheckRequest(service=service), timeout)
        assert isinstance(response, health_pb2.HealthCheckResponse)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    def wait_until_serving(self, service: str = "", timeout: float = 30.0) -> None:
        """Block until the health check answers SERVING (the server is up and a model is loaded)."""
        import time

        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            try:
                last = self.health(service, timeout=1.0)
                if last == "SERVING":
                    return
            except ServerError as error:
                last = str(error)
            time.sleep(0.05)
        raise TimeoutError(f"{self.address} did not become SERVING within {timeout} s (last: {last})")
