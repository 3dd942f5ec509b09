"""The batch job's result table: CSV, JSON Lines or Parquet, written as the job goes and resumable.

One row per file: `path`, the top-k predictions (`label`, `index`, `score` for the best class, then
`label_2`, `index_2`, `score_2`, ...), `model`, `version` and `error` (empty when the file was
classified). Rows are appended batch by batch and flushed, so a crash keeps every batch written before
it. Reopening an output repairs a torn last line (a SIGKILL in the middle of a write) and returns the
paths already done, which the job then skips: every file ends up in the table exactly once.

CSV and JSON Lines are appended to in place. Parquet files cannot be appended to, so a Parquet job writes
a JSON Lines journal next to the output (`.<name>.partial.jsonl`) and turns it into the Parquet file when
the job finishes; a rerun after a crash resumes from the journal.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LOG = logging.getLogger(__name__)

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
FSYNC_INTERVAL_S = 1.0


class OutputError(ValueError):
    """The output file has an unknown extension, or an existing output cannot be resumed."""


@dataclass(frozen=True)
class Prediction:
    label: str
    index: int
    score: float


@dataclass(frozen=True)
class ResultRow:
    """One file's outcome: its predictions best first, or an error message and no predictions."""

    path: str
    predictions: tuple[Prediction, ...] = ()
    error: str = ""


def output_format(path: Path) -> str:
    """The format chosen by the output's extension; an error naming the supported ones otherwise."""
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise OutputError(
            f"cannot tell the output format of {path}: use one of {', '.join(sorted(FORMATS))} as extension"
        )
    return fmt


def columns(top_k: int) -> list[str]:
    """The table's columns for top-k predictions, in order."""
    names = ["path"]
    for rank in range(1, top_k + 1):
        suffix = "" if rank == 1 else f"_{rank}"
        names += [f"label{suffix}", f"index{suffix}", f"score{suffix}"]
    return [*names, "model", "version", "error"]


def row_record(row: ResultRow, top_k: int, model: str, version: int) -> dict[str, Any]:
    """A row as a column → value mapping; prediction columns are None for an error row."""
    record: dict[str, Any] = {"path": row.path}
    for rank in range(1, top_k + 1):
        suffix = "" if rank == 1 else f"_{rank}"
        prediction = row.predictions[rank - 1] if rank <= len(row.predictions) else None
        record[f"label{suffix}"] = prediction.label if prediction else None
        record[f"index{suffix}"] = prediction.index if prediction else None
        record[f"score{suffix}"] = prediction.score if prediction else None
    record["model"] = model
    record["version"] = version
    record["error"] = " ".join(row.error.split()) if row.error else ""
    return record


def _truncate_torn_tail(path: Path) -> int:
    """Cut a last line that has no newline (a write torn by a crash); returns the bytes removed."""
    size = path.stat().st_size
    if size == 0:
        return 0
    with open(path, "rb+") as handle:
        handle.seek(-1, os.SEEK_END)
        if handle.read(1) == b"\n":
            return 0
        # Walk back to the last newline in blocks.
        position = size
        keep = 0
        while position > 0:
            step = min(65536, position)
            position -= step
            handle.seek(position)
            block = handle.read(step)
            newline = block.rfind(b"\n")
            if newline >= 0:
                keep = position + newline + 1
                break
        handle.truncate(keep)
        handle.flush()
        os.fsync(handle.fileno())
    LOG.warning("repaired %s: removed a torn last line of %d bytes", path, size - keep)
    return size - keep


def _rewrite(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.rewrite")
    temporary.write_text(text, encoding="utf-8", newline="")
    os.replace(temporary, path)


class _LineWriter:
    """Appends text lines to a file; flushes each batch, fsyncs at most once a second and at close."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle = open(path, "a", encoding="utf-8", newline="")  # noqa: SIM115 (closed in close())
        self._last_sync = time.monotonic()

    def write_text(self, text: str, force_sync: bool = False) -> None:
        self._handle.write(text)
        self._handle.flush()
        now = time.monotonic()
        if force_sync or now - self._last_sync >= FSYNC_INTERVAL_S:
            os.fsync(self._handle.fileno())
            self._last_sync = now

    def close(self) -> None:
        if not self._handle.closed:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()


def _require_pyarrow(path: Path) -> None:
    """Refuse a Parquet output before any work when pyarrow is missing, not after the last batch."""
    try:
        import pyarrow  # noqa: F401
    except ImportError as error:
        raise OutputError(
            f"{path}: Parquet output needs pyarrow (install `cnnserve[parquet]`); or write .csv or .jsonl"
        ) from error


class ResultTable:
    """An open output: the paths already in it, and `write()` to append a batch of rows."""

    def __init__(self, path: Path, top_k: int, model: str, version: int, resume: bool = True) -> None:
        self.path = path
        self.format = output_format(path)
        if self.format == "parquet":
            _require_pyarrow(path)
        self.top_k = top_k
        self.model = model
        self.version = version
        self.columns = columns(top_k)
        self.done: set[str] = set()
        self.rows_written = 0
        self._journal = path.with_name(f".{path.name}.partial.jsonl") if self.format == "parquet" else path
        path.parent.mkdir(parents=True, exist_ok=True)
        if not resume:
            for stale in {path, self._journal}:
                stale.unlink(missing_ok=True)
        if self.format == "parquet":
            self._seed_journal_from_parquet()
        if self.format == "csv":
            self._open_csv()
        else:
            self._open_jsonl(self._journal)

    # --- opening and repairing -------------------------------------------------------------------------

    def _check_columns(self, found: Sequence[str], where: Path) -> None:
        if list(found) != self.columns:
            raise OutputError(
                f"{where} has columns {', '.join(found)} but this job writes {', '.join(self.columns)} "
                "(a different --top-k?): use --restart to overwrite it, or another --output"
            )

    def _check_model(self, record: dict[str, Any], where: Path) -> None:
        if record.get("model") not in (None, "", self.model):
            raise OutputError(
                f"{where} holds results of model {record['model']!r}, not {self.model!r}: "
                "use --restart to overwrite it, or another --output"
            )
        if str(record.get("version")) not in ("", "None", str(self.version)):
            LOG.warning(
                "%s holds results of %s version %s; the rest is classified with version %d",
                where,
                self.model,
                record.get("version"),
                self.version,
            )

    def _open_csv(self) -> None:
        path = self.path
        if path.exists() and path.stat().st_size > 0:
            _truncate_torn_tail(path)
            text = path.read_text(encoding="utf-8")
            rows = list(csv.reader(io.StringIO(text, newline="")))
            if rows:
                self._check_columns(rows[0], path)
                good = [row for row in rows[1:] if len(row) == len(self.columns)]
                if len(good) != len(rows) - 1:
                    LOG.warning("repaired %s: dropped %d malformed rows", path, len(rows) - 1 - len(good))
                    buffer = io.StringIO(newline="")
                    csv.writer(buffer, lineterminator="\n").writerows([self.columns, *good])
                    _rewrite(path, buffer.getvalue())
                if good:
                    self._check_model(dict(zip(self.columns, good[0], strict=True)), path)
                self.done = {row[0] for row in good}
        self._writer = _LineWriter(path)
        if path.stat().st_size == 0:
            self._writer.write_text(self._csv_lines([self.columns]), force_sync=True)

    def _open_jsonl(self, path: Path) -> None:
        if path.exists() and path.stat().st_size > 0:
            _truncate_torn_tail(path)
            good: list[str] = []
            bad = 0
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    bad += 1
                    continue
                if not isinstance(record, dict) or "path" not in record:
                    bad += 1
                    continue
                if not good:
                    self._check_columns(list(record), path)
                    self._check_model(record, path)
                good.append(line)
                self.done.add(record["path"])
            if bad:
                LOG.warning("repaired %s: dropped %d malformed lines", path, bad)
                _rewrite(path, "".join(f"{line}\n" for line in good))
        self._writer = _LineWriter(path)

    def _seed_journal_from_parquet(self) -> None:
        """Resuming a finished Parquet output: its rows become the journal the job appends to."""
        if self._journal.exists() or not self.path.exists():
            return
        import pyarrow.parquet as pq

        table = pq.read_table(self.path)
        self._check_columns(table.column_names, self.path)
        with open(self._journal, "w", encoding="utf-8") as handle:
            for record in table.to_pylist():
                handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    # --- writing ---------------------------------------------------------------------------------------

    def _csv_lines(self, rows: Iterable[Sequence[Any]]) -> str:
        buffer = io.StringIO(newline="")
        csv.writer(buffer, lineterminator="\n").writerows(rows)
        return buffer.getvalue()

    def write(self, rows: Sequence[ResultRow]) -> None:
        """Append one batch of rows in one write, then flush it."""
        if not rows:
            return
        if self.format == "csv":
            text = self._csv_lines(self._csv_row(row) for row in rows)
        else:
            text = "".join(
                json.dumps(row_record(row, self.top_k, self.model, self.version)) + "\n" for row in rows
            )
        self._writer.write_text(text)
        self.done.update(row.path for row in rows)
        self.rows_written += len(rows)

    def _csv_row(self, row: ResultRow) -> list[Any]:
        """The CSV cells of a row, built directly (this runs once per image)."""
        cells: list[Any] = [row.path]
        for rank in range(self.top_k):
            if rank < len(row.predictions):
                prediction = row.predictions[rank]
                cells += [prediction.label, prediction.index, prediction.score]
            else:
                cells += ["", "", ""]
        cells += [self.model, self.version, " ".join(row.error.split()) if row.error else ""]
        return cells

    def close(self, finished: bool = True) -> None:
        """Flush and sync; a finished Parquet job turns its journal into the Parquet file."""
        self._writer.close()
        if finished and self.format == "parquet":
            self._journal_to_parquet()

    def _journal_to_parquet(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        fields = []
        for name in self.columns:
            if name.startswith("index") or name == "version":
                fields.append(pa.field(name, pa.int64()))
            elif name.startswith("score"):
                fields.append(pa.field(name, pa.float64()))
            else:
                fields.append(pa.field(name, pa.string()))
        schema = pa.schema(fields)
        with open(self._journal, encoding="utf-8") as handle:
            records = [json.loads(line) for line in handle if line.strip()]
        table = pa.Table.from_pylist(records, schema=schema)
        temporary = self.path.with_name(f".{self.path.name}.writing")
        pq.write_table(table, temporary)
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, self.path)
        self._journal.unlink()


def read_table(path: Path) -> list[dict[str, Any]]:
    """All rows of a finished output as dictionaries (CSV values come back as strings)."""
    fmt = output_format(path)
    if fmt == "csv":
        with open(path, encoding="utf-8", newline="") as handle:
            return list(csv.DictReader(handle))
    if fmt == "jsonl":
        with open(path, encoding="utf-8") as handle:
            return [json.loads(line) for line in handle if line.strip()]
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()
