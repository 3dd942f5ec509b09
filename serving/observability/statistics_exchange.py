"""The statistics extension's figures summed over every worker process of one server, as of one server.

With `--workers N` the kernel hands each new connection to any worker, and each worker keeps its own
`StatisticsBook`. A client that reads the statistics before and after a measurement (perf_analyzer does,
over a new HTTP connection each time) would otherwise compare two workers' figures: counts that go
backwards, which perf_analyzer refuses ("failed to find the requested model version"), or deltas of
nothing. So each worker answers its own book on a Unix socket in the workers' shared folder (the one the
supervisor makes for Prometheus' multiprocess files), and a statistics request asks every other worker
there and sums: the figures of the workers alive now, read at the moment of the request. No cost on the
inference path; a worker that does not answer within `PEER_TIMEOUT_S` (one stopping) is left out and
logged; the supervisor removes a dead worker's socket with its Prometheus files.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from cnnserve.serving.observability.statistics import Duration, StatisticsBook, VersionStatistics

LOG = logging.getLogger(__name__)

SOCKET_PREFIX = "statistics-"
SOCKET_SUFFIX = ".sock"
PEER_TIMEOUT_S = 2.0
# sockaddr_un holds 108 bytes on Linux (104 on macOS): a longer folder cannot hold the sockets.
MAX_SOCKET_PATH = 100


def socket_path(folder: str | Path, pid: int) -> Path:
    """Where the worker of process `pid` answers its statistics (the supervisor removes it when it dies)."""
    return Path(folder) / f"{SOCKET_PREFIX}{pid}{SOCKET_SUFFIX}"


def encode(selected: Sequence[VersionStatistics]) -> bytes:
    return json.dumps([asdict(stats) for stats in selected], separators=(",", ":")).encode()


def _duration(value: Any) -> Duration:
    return Duration(int(value["count"]), int(value["ns"]))


def decode(data: bytes) -> list[VersionStatistics]:
    """A worker's answer (`encode`); a malformed one raises ValueError."""
    try:
        return [
            VersionStatistics(
                name=str(entry["name"]),
                version=int(entry["version"]),
                success=_duration(entry["success"]),
                fail=_duration(entry["fail"]),
                queue=_duration(entry["queue"]),
                compute_infer=_duration(entry["compute_infer"]),
                inference_count=int(entry["inference_count"]),
                execution_count=int(entry["execution_count"]),
                last_inference_ms=int(entry["last_inference_ms"]),
                batches={int(size): _duration(d) for size, d in entry["batches"].items()},
            )
            for entry in json.loads(data)
        ]
    except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as error:
        raise ValueError(f"malformed statistics: {error}") from error


def _add(total: Duration, more: Duration) -> None:
    total.count += more.count
    total.ns += more.ns


def summed(books: Iterable[Sequence[VersionStatistics]]) -> StatisticsBook:
    """One book holding, per model version, the sum of every book's figures (the latest last inference)."""
    book = StatisticsBook()
    for selected in books:
        for stats in selected:
            total = book.for_version(stats.name, stats.version)
            for name in ("success", "fail", "queue", "compute_infer"):
                _add(getattr(total, name), getattr(stats, name))
            total.inference_count += stats.inference_count
            total.execution_count += stats.execution_count
            total.last_inference_ms = max(total.last_inference_ms, stats.last_inference_ms)
            for size, duration in stats.batches.items():
                _add(total.batches.setdefault(size, Duration()), duration)
    return book


class StatisticsExchange:
    """This worker's book, answered to its peers, and `snapshot()`: every worker's figures summed.

    `folder` None (one process serves alone): the snapshot is this process's own book. `pid`: whose socket
    this is (this process's by default)."""

    def __init__(self, book: StatisticsBook, folder: str | Path | None, pid: int | None = None) -> None:
        self.book = book
        self.folder = None if folder is None else Path(folder)
        self.path = None if self.folder is None else socket_path(self.folder, pid or os.getpid())
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        if self.path is None:
            return
        if len(str(self.path)) > MAX_SOCKET_PATH:
            LOG.warning(
                "the workers' folder %s is too long a path for a Unix socket: each worker's statistics are "
                "its own",
                self.folder,
            )
            self.path = None
            return
        self._server = await asyncio.start_unix_server(self._answer, path=str(self.path))

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(encode(self.book.select()))
            await writer.drain()
        except (ConnectionError, OSError):
            pass  # the asking worker gave up
        finally:
            writer.close()

    def _peers(self) -> list[Path]:
        if self.folder is None or self.path is None:
            return []
        return sorted(
            p for p in self.folder.glob(f"{SOCKET_PREFIX}*{SOCKET_SUFFIX}") if p.name != self.path.name
        )

    async def _ask(self, peer: Path) -> list[VersionStatistics]:
        try:
            async with asyncio.timeout(PEER_TIMEOUT_S):
                reader, writer = await asyncio.open_unix_connection(str(peer))
                try:
                    data = await reader.read()
                finally:
                    writer.close()
            return decode(data)
        except (OSError, TimeoutError, ValueError) as error:
            LOG.warning("worker statistics from %s left out: %s", peer.name, error or type(error).__name__)
            return []

    async def snapshot(self) -> StatisticsBook:
        """Every live worker's statistics summed (this process's own book when it serves alone)."""
        peers = self._peers()
        if not peers:
            return self.book
        answers = await asyncio.gather(*(self._ask(peer) for peer in peers))
        return summed([self.book.select(), *answers])

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        with contextlib.suppress(OSError):
            await self._server.wait_closed()
        if self.path is not None:
            self.path.unlink(missing_ok=True)
        self._server = None
