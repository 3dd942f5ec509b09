"""Result sinks of the batch job, one per output format (CSV, JSON Lines, Parquet), one lifecycle.

`open_sink` opens (and resumes) the output for the format its extension names; `read_table` reads a
finished output back as dictionaries.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cnnserve.serving.jobs.sinks.base import (
    Prediction,
    ResultRow,
    RowBatch,
    Sink,
    columns,
    output_format,
    path_text,
)
from cnnserve.serving.jobs.sinks.csv import CsvSink, read_csv
from cnnserve.serving.jobs.sinks.jsonl import JsonlSink, read_jsonl
from cnnserve.serving.jobs.sinks.parquet import ParquetSink, read_parquet

SINKS: dict[str, type[Sink]] = {"csv": CsvSink, "jsonl": JsonlSink, "parquet": ParquetSink}


def open_sink(path: Path, top_k: int, model: str, version: int, resume: bool = True) -> Sink:
    """The output's sink, opened: resumed (repaired, `done` read) or, with `resume=False`, started over."""
    return SINKS[output_format(path)](path, top_k, model, version, resume)


def read_table(path: Path) -> list[dict[str, Any]]:
    """All rows of a finished output as dictionaries (CSV values come back as strings)."""
    fmt = output_format(path)
    if fmt == "csv":
        return read_csv(path)
    if fmt == "jsonl":
        return read_jsonl(path)
    return read_parquet(path)


__all__ = [
    "Prediction",
    "ResultRow",
    "RowBatch",
    "Sink",
    "columns",
    "open_sink",
    "output_format",
    "path_text",
    "read_table",
]
