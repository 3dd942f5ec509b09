"""The Parquet sink. Parquet files cannot be appended to, so the rows go to a JSON Lines journal next to the
output (`.<name>.partial.jsonl`), which becomes the Parquet file when the job finishes; a rerun after a
crash resumes from the journal. pyarrow is optional (the `parquet` extra): without it the job is refused
before any work, with the install hint.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cnnserve.serving.errors import MissingExtraError
from cnnserve.serving.jobs.sinks.base import LineWriter
from cnnserve.serving.jobs.sinks.jsonl import JsonlSink


def require_pyarrow(path: Path) -> Any:
    """pyarrow (with its parquet module), or a clear error before any work when it is missing."""
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError as error:
        raise MissingExtraError(
            f"{path}: Parquet output needs pyarrow (install `cnnserve[parquet]`); or write .csv or .jsonl"
        ) from error
    return pyarrow


class ParquetSink(JsonlSink):
    format = "parquet"

    def __init__(self, path: Path, top_k: int, model: str, version: int, resume: bool = True) -> None:
        self.pa = require_pyarrow(path)
        self.journal = path.with_name(f".{path.name}.partial.jsonl")
        super().__init__(path, top_k, model, version, resume)

    def _files(self) -> set[Path]:
        return {self.path, self.journal}

    def _lines_path(self) -> Path:
        return self.journal

    def _open(self) -> LineWriter:
        self._seed_journal_from_parquet()
        return super()._open()

    def _seed_journal_from_parquet(self) -> None:
        """Resuming a finished Parquet output: its rows become the journal the job appends to."""
        if self.journal.exists() or not self.path.exists():
            return
        table = self.pa.parquet.read_table(self.path)
        self.check_columns(table.column_names, self.path)
        with open(self.journal, "w", encoding="utf-8") as handle:
            for record in table.to_pylist():
                handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def close(self, finished: bool = True) -> None:
        super().close(finished)
        if finished:
            try:
                self._journal_to_parquet()
            except OSError as error:
                raise self.write_error(error) from error

    def _journal_to_parquet(self) -> None:
        pa = self.pa
        fields = []
        for name in self.columns:
            if name.startswith("index") or name == "version":
                fields.append(pa.field(name, pa.int64()))
            elif name.startswith("score"):
                fields.append(pa.field(name, pa.float64()))
            else:
                fields.append(pa.field(name, pa.string()))
        with open(self.journal, encoding="utf-8") as handle:
            records = [json.loads(line) for line in handle if line.strip()]
        table = pa.Table.from_pylist(records, schema=pa.schema(fields))
        temporary = self.path.with_name(f".{self.path.name}.writing")
        pa.parquet.write_table(table, temporary)
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, self.path)
        self.journal.unlink()


def read_parquet(path: Path) -> list[dict[str, Any]]:
    return require_pyarrow(path).parquet.read_table(path).to_pylist()
