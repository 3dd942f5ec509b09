"""Fixtures of the docker tests; the machinery lives in dockerimage.py (importable by the test modules)."""

from __future__ import annotations

import pytest
from dockerimage import (
    CPU_DOCKERFILE,
    GPU_DOCKERFILE,
    Dockerfile,
    ServingInstall,
    build_serving_install,
    parse_dockerfile,
)


@pytest.fixture(scope="session")
def cpu_dockerfile() -> Dockerfile:
    return parse_dockerfile(CPU_DOCKERFILE)


@pytest.fixture(scope="session")
def gpu_dockerfile() -> Dockerfile:
    return parse_dockerfile(GPU_DOCKERFILE)


@pytest.fixture(scope="session")
def serving_install(cpu_dockerfile: Dockerfile, tmp_path_factory: pytest.TempPathFactory) -> ServingInstall:
    """The serving image's /opt/venv, rebuilt outside a container from the same files (slow-ish: ~10 s)."""
    return build_serving_install(cpu_dockerfile, tmp_path_factory.mktemp("serving-image"))
