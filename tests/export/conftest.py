"""Fixtures of the export tests: a folder of real RGB images for the RGB architectures, fast options."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def rgb_data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where `export_runs.make_run` writes its small image-folder datasets (one per class count and size)."""
    return tmp_path_factory.mktemp("rgb-datasets")
