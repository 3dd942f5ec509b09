"""A Parquet output without pyarrow is refused when the job opens it, before any image is classified."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from cnnserve.serving.errors import MissingExtraError
from cnnserve.serving.jobs.sinks import open_sink


def test_parquet_without_pyarrow_is_refused_up_front(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # makes `import pyarrow` raise ImportError
    output = tmp_path / "results.parquet"
    with pytest.raises(MissingExtraError, match=r"results\.parquet: Parquet output needs pyarrow"):
        open_sink(output, top_k=1, model="mnist_cnn", version=1)
    assert not output.exists()
    assert not (tmp_path / ".results.parquet.partial.jsonl").exists()


def test_csv_needs_no_pyarrow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    table = open_sink(tmp_path / "results.csv", top_k=1, model="mnist_cnn", version=1)
    assert table.format == "csv"
