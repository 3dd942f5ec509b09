"""The batch job's remote engine: send the files' encoded bytes to a running server, several calls at once.

Calls go through the project's client (`serving/grpc/client.py`). The server decodes and classifies (its
dynamic batcher merges our calls with everyone else's), so this side only reads files. A batch the server
refuses because one image is bad is retried in halves until the bad image is alone, so the bad file gets
an error row and the rest of the batch is still classified. UNAVAILABLE (the server restarting or gone)
is retried with exponential backoff; when it stays away the job stops with a clear error, keeping every
row written so far, and a rerun resumes.
"""

from __future__ import annotations

import contextvars
import logging
import os
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from cnnserve.serving.errors import JobError, ServerUnavailableError
from cnnserve.serving.grpc.client import ClassifyResult, CnnserveClient, ServerError
from cnnserve.serving.jobs.sinks.base import RowBatch
from cnnserve.serving.security.client_credentials import ClientSecurity
from cnnserve.serving.settings import DEFAULT_MAX_BATCH_SIZE

LOG = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0
CALL_TIMEOUT_S = 120.0
RETRIES = 6  # backoff 0.5, 1, 2, 4, 8, 8 s: about 24 s of server absence is survived
BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 8.0
MAX_REQUEST_BYTES = 3 * 1024 * 1024  # under gRPC's default 4 MiB message limit
# Images per call unless --batch-size says otherwise: at most the server's default --max-images, and at most
# IMAGES_IN_FLIGHT over all calls in flight, well under a server worker's default queue bound (16 batches of
# 64). Calls of 128 images measured ~20% more images/s than calls of 64 (8 in flight, 28x28 PNG digits);
# 256 x 8 in flight filled the server's queues.
MAX_CALL_IMAGES = 256
IMAGES_IN_FLIGHT = 1024
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)


def _split_by_size(items: Sequence[tuple[int, bytes]], limit: int) -> list[list[tuple[int, bytes]]]:
    """Cut a batch into requests of at most `limit` bytes of images (a single larger image goes alone)."""
    parts: list[list[tuple[int, bytes]]] = [[]]
    size = 0
    for item in items:
        if parts[-1] and size + len(item[1]) > limit:
            parts.append([])
            size = 0
        parts[-1].append(item)
        size += len(item[1])
    return [part for part in parts if part]


class _Columns:
    """A batch's answers as they come back, call by call, to become its RowBatch."""

    def __init__(self, files: int, top_k: int) -> None:
        self.top_k = top_k
        self.indices: list[list[int]] = [[-1] * top_k] * files  # rows are replaced, never changed
        self.scores: list[list[float]] = [[0.0] * top_k] * files
        self.errors: dict[int, str] = {}
        self.names: dict[int, str] = {}  # class index -> label, as the server named them

    def answer(self, position: int, predictions: Sequence[Any]) -> None:
        pad = self.top_k - len(predictions)
        self.indices[position] = [int(p.index) for p in predictions[: self.top_k]] + [-1] * pad
        self.scores[position] = [float(p.score) for p in predictions[: self.top_k]] + [0.0] * pad
        for p in predictions:
            self.names.setdefault(int(p.index), p.label)

    def batch(self, paths: list[str], labels: Sequence[str]) -> RowBatch:
        """The RowBatch, labelled with the model's labels (or the server's names, where they differ)."""
        if any(index >= len(labels) or labels[index] != name for index, name in self.names.items()):
            count = max(len(labels), max(self.names) + 1)
            labels = [self.names.get(i, labels[i] if i < len(labels) else str(i)) for i in range(count)]
        indices = np.array(self.indices, dtype=np.int64).reshape(len(paths), self.top_k)
        scores = np.array(self.scores, dtype=np.float64).reshape(len(paths), self.top_k)
        return RowBatch(paths, labels, indices, scores, self.errors)


class RemoteEngine:
    """Classify batches of files under `root` through a cnnserve server's Classify RPC."""

    def __init__(
        self,
        root: Path,
        address: str,
        model: str,
        version: int = 0,
        top_k: int = 1,
        workers: int = 0,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        retries: int = RETRIES,
        backoff_start_s: float = BACKOFF_START_S,
        security: ClientSecurity | None = None,
    ) -> None:
        self.root = root
        self.address = address
        self.top_k = top_k
        self.workers = workers or 4
        self.retries = retries
        self.backoff_start_s = backoff_start_s
        self._client = CnnserveClient(address, timeout=CALL_TIMEOUT_S, security=security)
        try:
            self._client.wait_until_serving(timeout=connect_timeout_s)
        except TimeoutError as error:
            self._client.close()
            raise ServerUnavailableError(
                f"cannot reach a serving server at {address} within {connect_timeout_s:.0f} s: "
                "is `cnnserve serve` running there?"
            ) from error
        try:
            metadata = self._client.metadata(model, version, timeout=connect_timeout_s)
        except ServerError as error:
            self._client.close()
            raise JobError(f"server {address} cannot classify with model {model!r}: {error}") from error
        self.model_name = metadata.name or model
        self.model_version = int(metadata.version)
        self.labels = tuple(metadata.labels)
        if self.labels:  # as the local engine does: never ask for more classes than the model has
            self.top_k = min(self.top_k, len(self.labels))
        self.max_batch_size = int(metadata.max_batch_size) or DEFAULT_MAX_BATCH_SIZE
        # The server cuts a call into batches of max_batch_size: bigger calls only save per-call work.
        self.call_images = min(MAX_CALL_IMAGES, max(self.max_batch_size, IMAGES_IN_FLIGHT // self.workers))
        self._pool: ThreadPoolExecutor | None = None

    def __enter__(self) -> RemoteEngine:
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="classify-folder")
        LOG.info(
            "remote engine: %s, model %s v%d, %d calls in flight",
            self.address,
            self.model_name,
            self.model_version,
            self.workers,
        )
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._client.close()

    def _call(self, images: Sequence[bytes]) -> ClassifyResult:
        """One Classify call, retried with backoff while the server is unavailable."""
        delay = self.backoff_start_s
        for attempt in range(self.retries + 1):
            try:
                return self._client.classify(
                    list(images), model=self.model_name, top_k=self.top_k, version=self.model_version
                )
            except ServerError as error:
                if error.code not in RETRYABLE or attempt == self.retries:
                    raise
                LOG.warning(
                    "server %s: %s; retry %d/%d in %.1f s",
                    self.address,
                    error,
                    attempt + 1,
                    self.retries,
                    delay,
                )
                time.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX_S)
        raise AssertionError("unreachable")

    def _classify_part(self, part: Sequence[tuple[int, bytes]], columns: _Columns) -> None:
        try:
            result = self._call([data for _, data in part])
        except ServerError as error:
            if error.code in RETRYABLE:
                raise ServerUnavailableError(
                    f"server {self.address} stayed unavailable after {self.retries} retries with backoff "
                    f"({error}); the rows so far are kept and a rerun resumes"
                ) from error
            if error.code != grpc.StatusCode.INVALID_ARGUMENT:
                raise JobError(f"server {self.address} failed a batch: {error}") from error
            if len(part) == 1:
                columns.errors[part[0][0]] = error.message or error.code.name
                return
            # One bad image fails the whole call (as does a call over the server's --max-images): halve it
            # until the bad images are alone, a few calls per bad image rather than one per image.
            middle = len(part) // 2
            self._classify_part(part[:middle], columns)
            self._classify_part(part[middle:], columns)
            return
        for (position, _), predictions in zip(part, result.predictions, strict=True):
            columns.answer(position, predictions)

    def _classify_batch(self, paths: list[str]) -> RowBatch:
        columns = _Columns(len(paths), self.top_k)
        readable: list[tuple[int, bytes]] = []
        for position, relative in enumerate(paths):
            try:
                with open(os.path.join(self.root, relative), "rb") as handle:
                    readable.append((position, handle.read()))
            except OSError as error:
                columns.errors[position] = f"cannot read file: {error.strerror or error}"
        for part in _split_by_size(readable, MAX_REQUEST_BYTES):
            self._classify_part(part, columns)
        return columns.batch(paths, self.labels)

    def classify(self, batches: Iterator[list[str]]) -> Iterator[RowBatch]:
        """Rows for each batch, in order, with up to `workers` calls in flight."""
        if self._pool is None:
            raise RuntimeError("RemoteEngine must be used as a context manager")
        pending: deque[Future[RowBatch]] = deque()
        exhausted = False
        while True:
            while not exhausted and len(pending) < self.workers + 1:
                paths = next(batches, None)
                if paths is None:
                    exhausted = True
                    break
                # The caller's context (the job's chunk span, when tracing) goes with the call to its thread.
                context = contextvars.copy_context()
                pending.append(self._pool.submit(context.run, self._classify_batch, paths))
            if not pending:
                return
            yield pending.popleft().result()
