"""The serving image's contract, held outside a container: its exact command, environment and health check.

Each test runs the final stage's ENTRYPOINT + CMD with the stage's ENV, as `docker run` would, on the
serving-only install of conftest's `serving_install` (the files the Dockerfile copies, no TensorFlow). Only
what a test cannot have in a container is changed: the repository path (the `model_repository` fixture
instead of the /models mount), loopback and free ports instead of 0.0.0.0:8500/8501, and where a test needs
it a shorter poll interval or a single worker, set as `docker run -e` would set them.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import yaml
from dockerimage import (
    DOCKER_DIR,
    IMAGE_REPO,
    Dockerfile,
    ServingInstall,
    Stage,
    free_port,
    image_environment,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image, ImageDraw

from cnnserve.protos import inference_pb2, inference_pb2_grpc

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

STARTUP_S = 120.0  # generous: a 2-core CI box that also runs other suites spawns the workers slowly
STOP_S = 45.0  # the server's grace period (30 s) plus process teardown


@dataclass
class RunningImage:
    """The image's command running as a subprocess: its environment, working directory and log."""

    stage: Stage
    process: subprocess.Popen[bytes]
    env: dict[str, str]
    cwd: Path
    log_path: Path

    @property
    def port(self) -> int:
        return int(self.env["CNNSERVE_PORT"])

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def healthcheck(self, timeout: float | None = None) -> subprocess.CompletedProcess[str]:
        """The image's HEALTHCHECK command, run as Docker runs it (same environment, by default its timeout).

        A one-off check whose answer a test asserts passes a longer `timeout`: on a loaded machine, starting
        the check's Python process alone can take longer than the image's 5 s.
        """
        options, command = self.stage.healthcheck()
        if timeout is None:
            timeout = float(options.get("timeout", "30s").rstrip("s"))
        try:
            return subprocess.run(
                command, env=self.env, cwd=self.cwd, capture_output=True, text=True, timeout=timeout
            )
        except subprocess.TimeoutExpired as expired:  # Docker counts a check that times out as failed
            return subprocess.CompletedProcess(command, 1, "", f"timed out after {expired.timeout:g} s")

    def health(self, service: str = "") -> str:
        """The grpc.health.v1 status name, or the gRPC error code's name when there is no answer."""
        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            try:
                response = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=30
                )
            except grpc.RpcError as error:
                return error.code().name  # type: ignore[attr-defined]
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    def assert_running(self) -> None:
        code = self.process.poll()
        assert code is None, f"the server exited with {code}:\n{self.log()}"

    def wait_for(self, condition: str, predicate, timeout: float = STARTUP_S) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while not predicate():
            self.assert_running()
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout:.0f} s waiting until {condition}:\n{self.log()}")
            time.sleep(0.25)

    def wait_healthy(self, timeout: float = STARTUP_S) -> None:
        self.wait_for("the HEALTHCHECK passes", lambda: self.healthcheck().returncode == 0, timeout)

    def terminate(self) -> int:
        """`docker stop`: the image's STOPSIGNAL, then the exit code."""
        signum = getattr(signal, self.stage.last("STOPSIGNAL").arguments)
        self.process.send_signal(signum)
        try:
            return self.process.wait(timeout=STOP_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"no exit {STOP_S:.0f} s after {signum.name}:\n{self.log()}")


@contextmanager
def run_image(
    stage: Stage, install: ServingInstall, tmp_path: Path, overrides: Mapping[str, str | None]
) -> Iterator[RunningImage]:
    env = image_environment(stage, install, overrides)
    command = stage.command()
    # The command resolves on the image's PATH to the serving install, not to the test environment.
    resolved = shutil.which(command[0], path=env["PATH"])
    assert resolved is not None and Path(resolved).parent == install.bin_dir, resolved
    cwd = tmp_path / "container-root"  # like the image's `/`: no source tree to import from by accident
    cwd.mkdir(exist_ok=True)
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
    running = RunningImage(stage, process, env, cwd, log_path)
    try:
        yield running
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


def loopback(repo: Path, **extra: str) -> dict[str, str]:
    """What `docker run -v REPO:/models -p ...` amounts to outside a container."""
    return {
        "CNNSERVE_REPO": str(repo),
        "CNNSERVE_HOST": "127.0.0.1",
        "CNNSERVE_PORT": str(free_port()),
        "CNNSERVE_METRICS_PORT": str(free_port()),
        "CNNSERVE_HTTP_PORT": str(free_port()),
        "CNNSERVE_HEALTH_PORT": str(free_port()),
        **extra,
    }


def kubernetes_liveness_service() -> str:
    """The grpc.health.v1 service name that docker/k8s/deployment.yaml's liveness probe asks about."""
    deployment = yaml.safe_load((DOCKER_DIR / "k8s" / "deployment.yaml").read_text(encoding="utf-8"))
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container["livenessProbe"]["grpc"].get("service", "")


def digit_png(digit: int) -> bytes:
    """A real 28x28 grayscale PNG of a hand-drawn-looking digit (white stroke on black, as MNIST)."""
    image = Image.new("L", (28, 28), 0)
    draw = ImageDraw.Draw(image)
    if digit == 1:
        draw.line([(14, 4), (14, 24)], fill=255, width=3)
    else:  # a 7
        draw.line([(7, 6), (21, 6), (12, 24)], fill=255, width=3)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def process_tree(pid: int) -> list[int]:
    pids, pending = [], [pid]
    while pending:
        current = pending.pop()
        pids.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            children = (task / "children").read_text().split() if (task / "children").exists() else []
            pending.extend(int(c) for c in children)
    return pids


def test_image_command_serves_classifies_reports_health_and_stops_cleanly(
    serving_install: ServingInstall, cpu_dockerfile: Dockerfile, model_repository: Path, tmp_path: Path
) -> None:
    stage = cpu_dockerfile.final
    overrides = loopback(model_repository)
    # Nothing else differs from the image's own environment.
    assert set(overrides) == {
        "CNNSERVE_REPO",
        "CNNSERVE_HOST",
        "CNNSERVE_PORT",
        "CNNSERVE_METRICS_PORT",
        "CNNSERVE_HTTP_PORT",
        "CNNSERVE_HEALTH_PORT",
    }
    assert stage.env()["CNNSERVE_REPO"] == IMAGE_REPO

    with run_image(stage, serving_install, tmp_path, overrides) as server:
        server.wait_healthy()
        assert server.health() == "SERVING"
        assert server.health("mnist_cnn") == "SERVING"

        labels = (model_repository / "mnist_cnn" / "labels.txt").read_text(encoding="utf-8").splitlines()
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            response = stub.Classify(
                inference_pb2.ClassifyRequest(
                    model="mnist_cnn",
                    images=[
                        inference_pb2.Image(encoded=digit_png(7)),
                        inference_pb2.Image(encoded=digit_png(1)),
                    ],
                    top_k=3,
                ),
                timeout=30,
            )
        assert response.model == "mnist_cnn" and response.version == 1
        assert len(response.results) == 2
        for result in response.results:
            scores = [p.score for p in result.predictions]
            assert len(scores) == 3 and scores == sorted(scores, reverse=True)
            assert all(0.0 <= s <= 1.0 for s in scores) and sum(scores) <= 1.0 + 1e-5
            assert [p.label for p in result.predictions] == [labels[p.index] for p in result.predictions]

        # The Open Inference Protocol over HTTP, as curl or a load balancer's health check calls it.
        http_url = f"http://127.0.0.1:{overrides['CNNSERVE_HTTP_PORT']}/v2"
        with urllib.request.urlopen(f"{http_url}/health/ready", timeout=10) as reply:
            assert reply.status == 200
        request = {
            "inputs": [
                {
                    "name": "input",
                    "datatype": "BYTES",
                    "shape": [1],
                    "parameters": {"content_type": "base64"},
                    "data": [base64.b64encode(digit_png(7)).decode()],
                }
            ],
            "outputs": [{"name": "probabilities", "parameters": {"classification": 1}}],
        }
        infer = urllib.request.Request(
            f"{http_url}/models/mnist_cnn/infer", data=json.dumps(request).encode(), method="POST"
        )
        with urllib.request.urlopen(infer, timeout=30) as reply:
            answer = json.loads(reply.read())
        assert answer["outputs"][0]["shape"] == [1, 1] and answer["outputs"][0]["datatype"] == "BYTES"

        metrics_url = f"http://127.0.0.1:{overrides['CNNSERVE_METRICS_PORT']}/metrics"
        with urllib.request.urlopen(metrics_url, timeout=10) as reply:
            metrics = reply.read().decode()
        classify_counts = re.findall(
            r'^cnnserve_requests_total\{[^}]*model="mnist_cnn"[^}]*\} (\S+)$', metrics, re.M
        )
        assert classify_counts and sum(float(c) for c in classify_counts) >= 1, metrics[:2000]

        # No process of the server has TensorFlow mapped (it is not even installed in this environment).
        for pid in process_tree(server.process.pid):
            maps = Path(f"/proc/{pid}/maps")
            if maps.exists():
                assert "tensorflow" not in maps.read_text(), f"process {pid} loaded TensorFlow"

        assert server.terminate() == 0, server.log()
        unhealthy = server.healthcheck(timeout=STARTUP_S)
        assert unhealthy.returncode != 0 and "unhealthy" in unhealthy.stderr


@pytest.mark.parametrize("state", ["empty", "missing"])
def test_repository_without_models_reports_not_serving_and_keeps_polling(
    state: str,
    serving_install: ServingInstall,
    cpu_dockerfile: Dockerfile,
    model_repository: Path,
    tmp_path: Path,
) -> None:
    repo = tmp_path / "models"
    if state == "empty":
        repo.mkdir()
    overrides = loopback(repo, CNNSERVE_POLL_INTERVAL="0.5", CNNSERVE_WORKERS="1")
    with run_image(cpu_dockerfile.final, serving_install, tmp_path, overrides) as server:
        server.wait_for("the health service answers", lambda: server.health() != "UNAVAILABLE")
        assert server.health() == "NOT_SERVING"  # Kubernetes' readiness probe: no traffic to this pod
        # ... while its liveness probe passes, so Kubernetes does not restart it in a loop.
        assert server.health(kubernetes_liveness_service()) == "SERVING"
        check = server.healthcheck(timeout=STARTUP_S)
        assert check.returncode == 1 and "NOT_SERVING" in check.stderr
        time.sleep(2.0)  # several polls: still up, still NOT_SERVING, no crash loop
        server.assert_running()
        assert server.health() == "NOT_SERVING"
        log = server.log()
        assert str(repo) in log, f"the log does not name the repository:\n{log}"
        expected = "empty" if state == "empty" else r"not exist|missing|not found"
        assert re.search(expected, log, re.I), f"the log does not say the repository is {state}:\n{log}"

        # A model appears (moved in whole, as a publisher should): the server loads it and reports SERVING.
        staging = tmp_path / "staging"
        if state == "empty":
            shutil.copytree(model_repository / "mnist_cnn", staging / "mnist_cnn")
            os.rename(staging / "mnist_cnn", repo / "mnist_cnn")
        else:
            shutil.copytree(model_repository / "mnist_cnn", staging / "mnist_cnn")
            os.rename(staging, repo)
        server.wait_healthy(timeout=60)
        assert server.health("mnist_cnn") == "SERVING"
        assert server.terminate() == 0, server.log()


def test_gpu_image_without_a_gpu_exits_with_a_clear_error(
    serving_install: ServingInstall, gpu_dockerfile: Dockerfile, model_repository: Path, tmp_path: Path
) -> None:
    """The GPU image's environment (CNNSERVE_DEVICE=cuda) on a machine whose ONNX Runtime has no CUDA."""
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine has the CUDA execution provider")
    stage = gpu_dockerfile.final
    assert stage.env()["CNNSERVE_DEVICE"] == "cuda"
    started = time.monotonic()
    with run_image(stage, serving_install, tmp_path, loopback(model_repository)) as server:
        try:
            code = server.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"CNNSERVE_DEVICE=cuda without a GPU hangs instead of exiting:\n{server.log()}")
        log = server.log()
    assert code not in (0, None) and code > 0, f"exit code {code}:\n{log}"
    assert time.monotonic() - started < 60
    assert re.search(r"cuda", log, re.I) and "Traceback" not in log, log
    assert re.search(r"error", log, re.I), log


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CNNSERVE_PORT", "grpc"),
        ("CNNSERVE_PORT", "70000"),
        ("CNNSERVE_WORKERS", "0"),
        ("CNNSERVE_WORKERS", "-2"),
        ("CNNSERVE_WORKERS", "two"),
        ("CNNSERVE_METRICS_PORT", "metrics"),
        ("CNNSERVE_POLL_INTERVAL", "soon"),
        ("CNNSERVE_DEVICE", "tpu"),
    ],
)
def test_invalid_environment_exits_at_once_naming_the_variable(
    variable: str,
    value: str,
    serving_install: ServingInstall,
    cpu_dockerfile: Dockerfile,
    model_repository: Path,
    tmp_path: Path,
) -> None:
    overrides = {**loopback(model_repository), variable: value}
    started = time.monotonic()
    with run_image(cpu_dockerfile.final, serving_install, tmp_path, overrides) as server:
        try:
            code = server.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{variable}={value} did not stop the server:\n{server.log()}")
        log = server.log()
    assert code != 0, log
    assert time.monotonic() - started < 30
    assert variable in log and value in log, log
    assert "Traceback" not in log, log
