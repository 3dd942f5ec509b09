"""What the docker tests share: a Dockerfile reader, and the serving image installed outside a container.

No Docker engine runs in CI and no base image can be pulled, so the image is held to its contract another
way. `build_serving_install` replays the `build` stage of docker/Dockerfile: it copies the same folders the
Dockerfile COPYs, builds the serving-only `cnnserve` wheel from docker/serving-pyproject.toml, and installs
it into a fresh virtual environment that sees only the distributions pinned in
docker/requirements-serving.txt (linked from the test environment): no TensorFlow, no training, no export.
`image_environment` turns a stage's ENV into the environment a container would get, with the paths of the
image mapped onto that install, so a test can run the image's exact ENTRYPOINT/CMD and HEALTHCHECK.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKER_DIR = REPO_ROOT / "docker"
CPU_DOCKERFILE = DOCKER_DIR / "Dockerfile"
GPU_DOCKERFILE = DOCKER_DIR / "Dockerfile.gpu"
IMAGE_VENV = "/opt/venv"  # where both Dockerfiles build and keep the virtual environment
IMAGE_REPO = "/models"

_VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case
    arguments: str  # the rest of the logical line, continuations joined
    line: int


@dataclass(frozen=True)
class Copy:
    sources: tuple[str, ...]
    destination: str
    from_stage: str | None


@dataclass(frozen=True)
class Stage:
    name: str
    base: str
    instructions: tuple[Instruction, ...] = field(default_factory=tuple)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction:
        found = self.all(keyword)
        assert found, f"stage {self.name!r} has no {keyword}"
        return found[-1]

    def env(self) -> dict[str, str]:
        """ENV pairs in order, values unquoted but not expanded (`$PATH` stays as written)."""
        pairs: dict[str, str] = {}
        for instruction in self.all("ENV"):
            for token in shlex.split(instruction.arguments, posix=True):
                key, sep, value = token.partition("=")
                assert sep, f"line {instruction.line}: use ENV KEY=VALUE, not the legacy ENV KEY VALUE"
                pairs[key] = value
        return pairs

    def exec_form(self, keyword: str) -> list[str]:
        """ENTRYPOINT or CMD in exec (JSON) form, which is the only form our Dockerfiles use."""
        arguments = self.last(keyword).arguments
        value = json.loads(arguments)
        assert isinstance(value, list) and all(isinstance(v, str) for v in value), arguments
        return value

    def command(self) -> list[str]:
        """What `docker run IMAGE` executes: ENTRYPOINT followed by CMD."""
        return self.exec_form("ENTRYPOINT") + self.exec_form("CMD")

    def healthcheck(self) -> tuple[dict[str, str], list[str]]:
        """HEALTHCHECK options (`--interval` ...) and its command in exec form."""
        text = self.last("HEALTHCHECK").arguments
        options: dict[str, str] = {}
        while text.startswith("--"):
            option, _, text = text.partition(" ")
            key, _, value = option[2:].partition("=")
            options[key] = value
            text = text.lstrip()
        keyword, _, rest = text.partition(" ")
        assert keyword.upper() == "CMD", f"HEALTHCHECK must run a CMD, got {text!r}"
        command = json.loads(rest)
        assert isinstance(command, list), "HEALTHCHECK CMD must be in exec (JSON) form"
        return options, command

    def copies(self) -> list[Copy]:
        result = []
        for instruction in self.all("COPY"):
            tokens = shlex.split(instruction.arguments)
            from_stage = None
            while tokens and tokens[0].startswith("--"):
                flag = tokens.pop(0)
                if flag.startswith("--from="):
                    from_stage = flag.split("=", 1)[1]
            *sources, destination = tokens
            result.append(Copy(tuple(sources), destination, from_stage))
        return result

    def workdir_at(self, instruction: Instruction) -> str:
        """The WORKDIR in effect at an instruction of this stage ("/" when none is set)."""
        current = "/"
        for other in self.instructions:
            if other is instruction:
                break
            if other.keyword == "WORKDIR":
                current = os.path.join(current, other.arguments.strip())
        return current


@dataclass(frozen=True)
class Dockerfile:
    path: Path
    stages: tuple[Stage, ...]

    def stage(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(f"{self.path} has no stage {name!r}; it has {[s.name for s in self.stages]}")

    @property
    def final(self) -> Stage:
        """The stage `docker build` produces without --target."""
        return self.stages[-1]


def parse_dockerfile(path: Path) -> Dockerfile:
    """Logical instructions per stage: comments dropped, backslash continuations joined."""
    logical: list[tuple[int, str]] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        logical.append((start, " ".join(p for p in pending if p)))
        pending = []
    assert not pending, f"{path}: the last instruction ends with a continuation"

    stages: list[Stage] = []
    name, base, instructions = "", "", []
    for line, text in logical:
        keyword, _, arguments = text.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            if base:
                stages.append(Stage(name, base, tuple(instructions)))
            parts = arguments.split()
            base = parts[0]
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else str(len(stages))
            instructions = []
        else:
            assert base, f"{path}:{line}: {keyword} before any FROM"
            instructions.append(Instruction(keyword, arguments.strip(), line))
    stages.append(Stage(name, base, tuple(instructions)))
    return Dockerfile(path, tuple(stages))


def read_requirements(path: Path) -> dict[str, str]:
    """`name==version` lines of a requirements file, names normalised as pip does."""
    pins: dict[str, str] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep, f"{path.name}: {line!r} is not pinned with =="
        pins[normalise(name)] = version.strip()
    return pins


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def free_port() -> int:
    """A port that is free on 127.0.0.1 right now (the server binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class ServingInstall:
    """The serving image's /opt/venv, rebuilt outside a container from the same files."""

    venv: Path
    python: Path
    bin_dir: Path
    staged: Path  # what the build stage's COPY instructions produced under WORKDIR
    deps: Path  # the pinned distributions, linked from the test environment
    dockerfile: Dockerfile


def _link_distributions(names: list[str], target: Path) -> None:
    """Link every file of these installed distributions into `target`, laid out as in site-packages."""
    for name in names:
        try:
            distribution = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            pytest.fail(
                f"{name} (pinned in docker/requirements-serving.txt) is not installed in the test env"
            )
        root = Path(str(distribution.locate_file("")))
        for relative in distribution.files or []:
            if relative.parts[0] == ".." or "__pycache__" in relative.parts:
                continue
            source = root / relative
            link = target / relative
            if not source.exists() or link.exists():
                continue
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(source)


def _run(command: list[str], **kwargs: object) -> None:
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, **kwargs)  # type: ignore[call-overload]
    assert result.returncode == 0, f"{shlex.join(command)} failed:\n{result.stdout}\n{result.stderr}"


def build_serving_install(cpu_dockerfile: Dockerfile, root: Path) -> ServingInstall:
    """Replay the build stage of docker/Dockerfile into `root` (see the module docstring)."""
    build = cpu_dockerfile.stage("build")

    # The build stage's COPY instructions into its WORKDIR, from the repository (the build context).
    staged = root / "src"
    staged.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    for instruction, copy in zip(build.all("COPY"), build.copies(), strict=True):
        workdir = build.workdir_at(instruction)
        if copy.from_stage is not None or not workdir.startswith("/src"):
            continue
        if os.path.isabs(copy.destination):
            continue  # the requirements file: its distributions are linked below instead
        for source in copy.sources:
            origin = REPO_ROOT / source.rstrip("/")
            destination = staged / copy.destination.rstrip("/")
            if origin.is_dir():
                shutil.copytree(origin, destination, ignore=ignore)
            else:
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, destination)
    assert (staged / "pyproject.toml").is_file(), "the build stage no longer copies serving-pyproject.toml"

    # `pip install --no-deps .` of the build stage, as a wheel built here and installed there.
    wheels = root / "wheels"
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-q",
            "-w",
            str(wheels),
            str(staged),
        ],
        cwd=root,
    )
    venv = root / "opt" / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    deps = root / "deps"
    deps.mkdir()
    _link_distributions(list(read_requirements(DOCKER_DIR / "requirements-serving.txt")), deps)
    (site / "serving-image-deps.pth").write_text(f"{deps}\n", encoding="utf-8")
    (wheel,) = wheels.glob("cnnserve-*.whl")
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--no-deps",
            "--no-index",
            "-q",
            str(wheel),
        ]
    )
    return ServingInstall(venv, python, venv / "bin", staged, deps, cpu_dockerfile)


def image_environment(
    stage: Stage,
    install: ServingInstall,
    overrides: Mapping[str, str | None] | None = None,
) -> dict[str, str]:
    """The environment of a container of `stage`, with the image's paths mapped onto `install`.

    A container starts from a small environment (the base image's PATH, LANG, HOME) plus the stage's ENV;
    nothing of the test runner's environment (VIRTUAL_ENV, PYTHONPATH, ...) leaks in. `/opt/venv` becomes
    the install's venv. `overrides` sets (or, with None, removes) variables as `docker run -e` would.
    """
    base_path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    environ: dict[str, str] = {"PATH": base_path, "LANG": "C.UTF-8", "HOME": str(install.venv.parent)}

    def expand(value: str) -> str:
        return _VARIABLE.sub(lambda m: environ.get(m.group(1) or m.group(2), ""), value)

    for key, value in stage.env().items():
        environ[key] = expand(value).replace(IMAGE_VENV, str(install.venv))
    for key, value in (overrides or {}).items():
        if value is None:
            environ.pop(key, None)
        else:
            environ[key] = value
    return environ
