"""Classify images over the Open Inference Protocol's HTTP/REST endpoint, with the standard library only.

    client = OipHttpClient("http://localhost:8080")
    result = client.classify([png_bytes], model="mnist_cnn", top_k=3)

The images go as one BYTES input in binary data after the JSON (Triton's binary tensor extension) and the
answer comes from the classification extension; `cnnserve classify --url` uses it. An error answer raises
`HttpServerError` with the HTTP status and the server's message.
"""

from __future__ import annotations

import json
import ssl
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cnnserve.serving.core import oip, oip_tensors
from cnnserve.serving.errors import ServerUnavailableError
from cnnserve.serving.grpc.client import ClassifyResult
from cnnserve.serving.grpc.oip_client import classify_result
from cnnserve.serving.http.codec import HEADER_LENGTH_OUT
from cnnserve.serving.security.client_credentials import ClientSecurity
from cnnserve.serving.settings import DEFAULT_CLIENT_TIMEOUT_S


class HttpServerError(Exception):
    """The server answered with an error status: `status` (HTTP) and `message` (its {"error": ...})."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


def _ssl_context(security: ClientSecurity | None) -> ssl.SSLContext:
    """TLS for https: the given CA (else the system's) and, for mutual TLS, the client certificate."""
    ca = None if security is None or security.ca is None else security.ca.decode("ascii")
    context = ssl.create_default_context(cadata=ca)
    if security is not None and security.cert is not None and security.key is not None:
        # OpenSSL loads a certificate chain from files only: a private, short-lived copy.
        with tempfile.TemporaryDirectory(prefix="cnnserve-tls-") as folder:
            cert, key = Path(folder) / "client.crt", Path(folder) / "client.key"
            cert.write_bytes(security.cert)
            key.touch(mode=0o600)
            key.write_bytes(security.key)
            context.load_cert_chain(cert, key)
    return context


class OipHttpClient:
    """Requests to one server's /v2 endpoints."""

    def __init__(
        self, url: str, timeout: float = DEFAULT_CLIENT_TIMEOUT_S, security: ClientSecurity | None = None
    ) -> None:
        """`security`: TLS (https, trusting its CA, with a client certificate) and a bearer token."""
        parsed = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"not an HTTP URL: {url!r}")
        scheme = "https" if security is not None and security.tls else parsed.scheme
        self.base = f"{scheme}://{parsed.netloc}{parsed.path.rstrip('/')}"
        self.timeout = timeout
        self._input_names: dict[str, str] = {}
        self._headers = dict(security.metadata()) if security is not None else {}
        self._context = _ssl_context(security) if scheme == "https" else None
        if security is not None and scheme == "http":
            security.warn_if_exposed(parsed.netloc)

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[bytes, dict[str, str]]:
        """The body and headers of a 2xx answer; HttpServerError for any other."""
        all_headers = {**self._headers, **(headers or {})}
        request = urllib.request.Request(self.base + path, data=body, method=method, headers=all_headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout, context=self._context) as response:
                return response.read(), {k.lower(): v for k, v in response.headers.items()}
        except urllib.error.HTTPError as error:
            payload = error.read()
            try:
                message = json.loads(payload)["error"]
            except (ValueError, KeyError, TypeError):
                message = payload.decode("utf-8", errors="replace") or error.reason
            raise HttpServerError(error.code, str(message)) from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise ServerUnavailableError(f"cannot reach {self.base}: {reason}") from None

    def get_json(self, path: str) -> Any:
        return json.loads(self.request("GET", path)[0])

    @staticmethod
    def model_path(model: str, version: int = 0) -> str:
        path = f"/v2/models/{urllib.parse.quote(model, safe='')}"
        return f"{path}/versions/{version}" if version else path

    def input_name(self, model: str, version: int = 0) -> str:
        if model not in self._input_names:
            self._input_names[model] = self.get_json(self.model_path(model, version))["inputs"][0]["name"]
        return self._input_names[model]

    def classify(
        self, images: Sequence[bytes], model: str, top_k: int = 1, version: int = 0
    ) -> ClassifyResult:
        """The top_k classes of each encoded image (PNG, JPEG, ...), best first."""
        raw = oip_tensors.join_bytes(images)
        header = json.dumps(
            {
                "inputs": [
                    {
                        "name": self.input_name(model, version),
                        "datatype": oip.BYTES,
                        "shape": [len(images)],
                        "parameters": {"binary_data_size": len(raw)},
                    }
                ],
                "outputs": [{"name": oip.PROBABILITIES, "parameters": {"classification": top_k}}],
            }
        ).encode()
        body, _ = self.request(
            "POST",
            self.model_path(model, version) + "/infer",
            header + raw,
            {"Content-Type": "application/octet-stream", HEADER_LENGTH_OUT: str(len(header))},
        )
        answer = json.loads(body)
        (output,) = [o for o in answer["outputs"] if o["name"] == oip.PROBABILITIES]
        entries = [entry.encode("utf-8") for entry in output["data"]]
        return classify_result(answer["model_name"], answer["model_version"], entries, len(images))
