"""The JSON Lines sink: one JSON object per file and line, appended in place."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cnnserve.serving.jobs.sinks.base import (
    LOG,
    LineWriter,
    RowBatch,
    Sink,
    batch_records,
    is_damaged,
    read_text,
    rewrite,
    truncate_torn_tail,
)


class JsonlSink(Sink):
    format = "jsonl"

    def _lines_path(self) -> Path:
        """The file the rows are appended to (the output itself; a Parquet sink's journal)."""
        return self.path

    def _open(self) -> LineWriter:
        path = self._lines_path()
        if path.exists() and path.stat().st_size > 0:
            truncate_torn_tail(path)
            good: list[str] = []
            bad = damaged = 0
            for line in read_text(path).splitlines():
                if is_damaged(line):
                    damaged += 1
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    bad += 1
                    continue
                if not isinstance(record, dict) or "path" not in record:
                    bad += 1
                    continue
                if not good:
                    self.check_columns(list(record), path)
                    self.check_model(record, path)
                good.append(line)
                self.done.add(record["path"])
            if bad or damaged:
                LOG.warning(
                    "repaired %s: dropped %d malformed lines (%d of them not valid UTF-8); their files are "
                    "classified again",
                    path,
                    bad + damaged,
                    damaged,
                )
                rewrite(path, "".join(f"{line}\n" for line in good))
        return LineWriter(path)

    def _text(self, batch: RowBatch) -> str:
        return "".join(
            json.dumps(record) + "\n" for record in batch_records(batch, self.top_k, self.model, self.version)
        )


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
