"""The explorer's files over HTTP: served by the server itself with a strict policy, only when asked for,
only on the HTTP port, and referring to nothing but themselves."""

from __future__ import annotations

import re
import socket
import urllib.error
import urllib.request
from importlib import resources
from typing import Any

import pytest

from cnnserve.serving.errors import SettingsError
from cnnserve.serving.settings import resolve
from cnnserve.serving.ui.page import CONTENT_SECURITY_POLICY

pytestmark = pytest.mark.timeout(120)


def get(port: int, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers.items()), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers.items()), error.read()


@pytest.fixture(scope="module")
def explorer(start_module_server: Any, model_repository: Any) -> Any:
    return start_module_server(model_repository, http_port=0, ui=True)


def static_files() -> dict[str, str]:
    folder = resources.files("cnnserve.serving.ui").joinpath("static")
    return {entry.name: entry.read_text(encoding="utf-8") for entry in folder.iterdir() if entry.is_file()}


@pytest.mark.parametrize("path", ["/", "/models/mnist_cnn", "/models/mnist_cnn/versions/1", "/models/x/"])
def test_the_page_is_served_at_root_and_per_model_with_a_strict_policy(explorer, path) -> None:
    status, headers, body = get(explorer.server.http_port, path.rstrip("/") if path != "/" else path)
    assert status == 200
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert "connect-src 'self'" in CONTENT_SECURITY_POLICY and "default-src 'none'" in CONTENT_SECURITY_POLICY
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert body == static_files()["index.html"].encode()


@pytest.mark.parametrize(
    ("name", "content_type"),
    [
        ("explorer.js", "text/javascript; charset=utf-8"),
        ("api.js", "text/javascript; charset=utf-8"),
        ("explorer.css", "text/css; charset=utf-8"),
        ("icon.svg", "image/svg+xml"),
    ],
)
def test_the_page_files_are_served_with_their_types(explorer, name, content_type) -> None:
    status, headers, body = get(explorer.server.http_port, f"/ui/{name}")
    assert (status, headers["Content-Type"]) == (200, content_type)
    assert body == static_files()[name].encode()
    status, headers, body = get(explorer.server.http_port, f"/ui/{name}", method="HEAD")
    assert (status, body, headers["Content-Length"]) == (200, b"", str(len(static_files()[name].encode())))


@pytest.mark.parametrize("path", ["/ui/nope.js", "/ui/index.html", "/ui/..%2fpage.py", "/models", "/ui/"])
def test_anything_else_is_not_found(explorer, path) -> None:
    status, _, body = get(explorer.server.http_port, path)
    assert status == 404 and b"error" in body


def test_the_files_refer_to_nothing_but_this_server() -> None:
    files = static_files()
    assert set(files) == {"index.html", "explorer.js", "api.js", "explorer.css", "icon.svg"}
    referenced = re.findall(r'(?:src|href)="([^"]+)"', files["index.html"])
    assert referenced and all(url.startswith("/ui/") for url in referenced), referenced
    assert {url.removeprefix("/ui/") for url in referenced} <= set(files)
    imports = re.findall(r'from "([^"]+)"', files["explorer.js"] + files["api.js"])
    assert imports == ["./api.js"]
    for name, text in files.items():
        if name == "icon.svg":
            text = text.replace('xmlns="http://www.w3.org/2000/svg"', "")  # a namespace, never fetched
        assert not re.search(r"https?://|[\"'(]//[a-z0-9]", text, re.I), name  # absolute or scheme-relative
    assert not re.search(r"url\(|@import", files["explorer.css"])
    # The token lives in the tab's memory only.
    scripts = files["api.js"] + files["explorer.js"]
    stores = r"\b(localStorage|sessionStorage|indexedDB|caches)\s*[.\[]|document\.cookie"
    assert not re.search(stores, scripts)


def test_the_page_is_off_unless_asked(start_module_server, model_repository) -> None:
    server = start_module_server(model_repository, http_port=0)
    status, _, body = get(server.server.http_port, "/")
    assert status == 404 and b"no endpoint /" in body
    assert get(server.server.http_port, "/ui/explorer.js")[0] == 404
    assert get(server.server.http_port, "/v1/models")[0] == 200  # the JSON API is the HTTP port's


def test_the_page_is_never_on_the_grpc_port(explorer) -> None:
    with socket.create_connection(("127.0.0.1", explorer.port), timeout=10) as connection:
        connection.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        received = b""
        try:
            while chunk := connection.recv(65536):
                received += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    assert b"<!doctype html>" not in received.lower()
    assert not received.startswith(b"HTTP/1.1 200")


def test_ui_needs_the_http_port() -> None:
    with pytest.raises(SettingsError, match="--ui needs --http-port"):
        resolve({"repo": "repo", "ui": "true"}, environ={})
    with pytest.raises(SettingsError, match="CNNSERVE_UI='maybe' must be true or false"):
        resolve({"repo": "repo"}, environ={"CNNSERVE_UI": "maybe"})
    settings = resolve({"repo": "repo"}, environ={"CNNSERVE_UI": "true", "CNNSERVE_HTTP_PORT": "8000"})
    assert settings.ui and settings.http_port == 8000
    assert not resolve({"repo": "repo", "http_port": "8000"}, environ={}).ui
