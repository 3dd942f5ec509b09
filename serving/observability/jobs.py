"""The batch job, traced: one span for the job and one per chunk of files handed to its engine.

A chunk's span lasts from the moment the engine takes the chunk until its last row is back (rows come back
in file order, whatever the engine's own batching). While the engine takes a chunk, the chunk's span is the
active one, so the remote engine's calls -- made in its threads with the context copied at hand-over --
carry it to the server as their `traceparent`, and the server's spans of those calls are its children.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

from cnnserve.serving.observability.tracing import Tracing


class RowsBack(Protocol):
    """What comes back from an engine for consecutive files (the batch job's RowBatch)."""

    @property
    def errors(self) -> Mapping[int, str]: ...

    def __len__(self) -> int: ...


class ChunkSpans:
    """Spans of the chunks handed to an engine (see the module doc); `wrap` the chunk iterator, report
    every list of rows to `rows_back`, and `close` once the engine is done (or failed)."""

    def __init__(self, tracing: Tracing) -> None:
        self.tracing = tracing
        self._open: deque[list[Any]] = deque()  # [span, files not back yet, failed rows]
        self._token: object | None = None

    def wrap(self, chunks: Iterator[list[str]]) -> Iterator[list[str]]:
        from opentelemetry import context, trace

        try:
            for index, chunk in enumerate(chunks):
                self._detach()
                span = self.tracing.tracer.start_span(
                    "chunk", attributes={"cnnserve.job.chunk": index, "cnnserve.job.files": len(chunk)}
                )
                self._open.append([span, len(chunk), 0])
                self._token = context.attach(trace.set_span_in_context(span))
                yield chunk
        finally:
            self._detach()

    def _detach(self) -> None:
        if self._token is not None:
            from opentelemetry import context

            context.detach(self._token)  # type: ignore[arg-type]
            self._token = None

    def rows_back(self, batch: RowsBack) -> None:
        """The rows (a RowBatch: a length and errors by position) of the oldest chunks' files, in order."""
        position = 0
        while position < len(batch) and self._open:
            entry = self._open[0]
            taken = min(entry[1], len(batch) - position)
            entry[1] -= taken
            entry[2] += sum(1 for failed in batch.errors if position <= failed < position + taken)
            position += taken
            if entry[1] == 0:
                span = self._open.popleft()[0]
                span.set_attribute("cnnserve.job.failed", entry[2])
                span.end()

    def close(self, error: BaseException | None = None) -> None:
        """End the spans of chunks whose rows never came back (the job stopped)."""
        from opentelemetry import trace

        self._detach()
        while self._open:
            span = self._open.popleft()[0]
            if error is not None:
                span.set_status(trace.Status(trace.StatusCode.ERROR, str(error)[:200]))
            span.end()
