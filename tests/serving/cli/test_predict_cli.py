"""`cnnserve classify|activations|serve` and the health probe as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from PIL import Image

MODEL = "mnist_cnn"
pytestmark = pytest.mark.timeout(180)


def _run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    environment = {
        k: v for k, v in os.environ.items() if not k.startswith("CNNSERVE_") or k == "CNNSERVE_TEST_CACHE"
    }
    return subprocess.run(
        [sys.executable, "-m", "cnnserve", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**environment, **(env or {})},
    )


def test_classify_prints_one_json_object_per_image(served, digits) -> None:
    paths = [str(p) for p in digits.png_paths[:3]]
    result = _run("classify", "--server", served.address, "--model", MODEL, "--top-k", "2", "--json", *paths)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["path"] for r in records] == paths
    for record in records:
        assert len(record["predictions"]) == 2
        assert set(record["predictions"][0]) == {"label", "index", "score"}
        assert record["predictions"][0]["score"] >= record["predictions"][1]["score"]
    plain = _run("classify", "--server", served.address, "--model", MODEL, paths[0])
    assert plain.returncode == 0 and plain.stdout.startswith(paths[0])


def test_client_errors_exit_non_zero_with_the_status_code(served, digits, tmp_path) -> None:
    path = str(digits.png_paths[0])
    result = _run("classify", "--server", served.address, "--model", "nope", path)
    assert result.returncode != 0 and "NOT_FOUND" in result.stderr and MODEL in result.stderr
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    result = _run("classify", "--server", served.address, "--model", MODEL, path, str(bad))
    assert result.returncode != 0 and "INVALID_ARGUMENT" in result.stderr and "image 1" in result.stderr
    result = _run("classify", "--server", "127.0.0.1:1", "--model", MODEL, "--timeout", "2", path)
    assert result.returncode != 0 and "UNAVAILABLE" in result.stderr


def test_activations_writes_a_mosaic_png(served, digits, tmp_path) -> None:
    out = tmp_path / "conv1.png"
    result = _run(
        "activations",
        "--server",
        served.address,
        "--model",
        MODEL,
        "--layer",
        "conv1",
        "--png",
        str(out),
        "--json",
        str(digits.png_paths[0]),
    )
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["layer"] == "conv1" and record["png"] == str(out)
    assert record["shape"][-1] == len(record["values"][0][0])
    with Image.open(out) as picture:
        assert picture.format == "PNG" and picture.width >= 64
    result = _run("activations", "--server", served.address, "--model", MODEL, "--layer", "nope", str(out))
    assert result.returncode != 0 and "NOT_FOUND" in result.stderr and "conv1" in result.stderr


def test_serve_rejects_bad_settings_at_once(tmp_path) -> None:
    repo = str(tmp_path)
    for variable, value in [("CNNSERVE_PORT", "abc"), ("CNNSERVE_WORKERS", "0"), ("CNNSERVE_DEVICE", "tpu")]:
        result = _run("serve", "--repo", repo, env={variable: value}, timeout=30)
        assert result.returncode == 2 and variable in result.stderr, (variable, result.stderr)
    result = _run("serve", "--repo", repo, "--port", "70000", timeout=30)
    assert result.returncode == 2 and "--port" in result.stderr
    result = _run("serve", timeout=30)
    assert result.returncode == 2 and "CNNSERVE_REPO" in result.stderr


def test_serve_on_cuda_without_cuda_exits_non_zero(tmp_path) -> None:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    result = _run("serve", "--repo", str(tmp_path), "--device", "cuda", "--port", "0", timeout=30)
    assert result.returncode != 0 and "cuda" in result.stderr.lower()


def test_settings_from_environment_flag_wins() -> None:
    from cnnserve.serving.settings import resolve

    env = {
        "CNNSERVE_REPO": "/models",
        "CNNSERVE_PORT": "9000",
        "CNNSERVE_WORKERS": "3",
        "CNNSERVE_POLL_INTERVAL": "2",
    }
    settings = resolve({"port": "9100"}, env)
    assert (str(settings.repo), settings.port, settings.workers, settings.poll_interval) == (
        "/models",
        9100,
        3,
        2.0,
    )
    assert settings.intra_op_threads(cpu_count=6) == 2
    assert resolve({}, {"CNNSERVE_REPO": "/m"}, cpu_count=4).workers == 4


def test_healthcheck_probe(served) -> None:
    probe = [sys.executable, "-m", "cnnserve.serving.grpc.healthcheck", "--address", served.address]
    assert subprocess.run(probe, capture_output=True, timeout=30).returncode == 0
    assert subprocess.run([*probe, "--service", MODEL], capture_output=True, timeout=30).returncode == 0
    unknown = subprocess.run([*probe, "--service", "nope"], capture_output=True, text=True, timeout=30)
    assert unknown.returncode == 1 and "NOT_FOUND" in unknown.stderr
    dead = [
        sys.executable,
        "-m",
        "cnnserve.serving.grpc.healthcheck",
        "--address",
        "127.0.0.1:1",
        "--timeout",
        "1",
    ]
    assert subprocess.run(dead, capture_output=True, timeout=30).returncode == 1
