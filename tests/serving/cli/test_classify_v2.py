"""`cnnserve serve --http-port` (several workers) and `cnnserve classify --protocol v2 | --url` as a user
runs them: the three ways to classify give the same answer; errors are one line and a non-zero exit."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

MODEL = "mnist_cnn"
pytestmark = pytest.mark.timeout(180)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _classify(*args: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CNNSERVE_")}
    return subprocess.run(
        [sys.executable, "-m", "cnnserve", "classify", "--model", MODEL, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment,
    )


@pytest.mark.slow
def test_two_workers_serve_http_and_every_client_agrees(
    serve_subprocess: Any, model_repository: Path, digits: Any
) -> None:
    http_port = _free_port()
    server = serve_subprocess(
        "--repo", str(model_repository), "--workers", "2", env={"CNNSERVE_HTTP_PORT": str(http_port)}
    )
    url = f"http://127.0.0.1:{http_port}"
    with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=10) as response:
        assert response.status == 200
    paths = [str(p) for p in digits.png_paths[:3]]
    answers = []
    for how in (
        ["--server", server.address],
        ["--server", server.address, "--protocol", "v2"],
        ["--url", url],
    ):
        result = _classify(*how, "--top-k", "2", "--json", *paths)
        assert result.returncode == 0, result.stderr
        answers.append([json.loads(line) for line in result.stdout.splitlines()])
    labels = [[[p["label"] for p in r["predictions"]] for r in answer] for answer in answers]
    assert labels[0] == labels[1] == labels[2]
    assert [r["path"] for r in answers[2]] == paths
    result = _classify("--url", url, "--model", "nope", paths[0])
    assert result.returncode == 1 and result.stderr.strip().startswith(
        "error: HTTP 404: unknown model 'nope'"
    )
    result = _classify("--server", server.address, "--protocol", "v2", "--model", "nope", paths[0])
    assert result.returncode == 1 and "NOT_FOUND" in result.stderr
    server.signal(signal.SIGTERM)
    assert server.wait() == 0


def test_classify_needs_exactly_one_server(tmp_path: Path) -> None:
    image = tmp_path / "x.png"
    image.write_bytes(b"")
    neither = _classify(str(image))
    both = _classify("--server", "127.0.0.1:1", "--url", "http://127.0.0.1:1", str(image))
    v1_over_http = _classify("--url", "http://127.0.0.1:1", "--protocol", "cnnserve", str(image))
    for result in (neither, both, v1_over_http):
        assert result.returncode == 2 and result.stderr.startswith("error: ")
    unreachable = _classify("--url", f"http://127.0.0.1:{_free_port()}", str(image))
    assert unreachable.returncode == 1 and "cannot reach" in unreachable.stderr
    assert "Traceback" not in unreachable.stderr
