"""`cnnserve serve --workers N`: N server processes sharing one port, so the GIL never caps the server.

Each worker is a separate process (spawned, not forked: gRPC and ONNX Runtime threads do not survive a
fork) with its own sessions, bound to the same port with SO_REUSEPORT; the kernel spreads connections
over the workers that listen. The supervisor claims the port first (`ports.claim_port`: a port another
process holds is refused, and `--port 0` gives every worker the same one), serves the summed Prometheus
metrics of all workers (multiprocess mode), forwards SIGTERM/SIGINT, and exits 0 when every worker
stopped cleanly.

A worker that dies on its own after it served is restarted after a backoff (0.5 s, doubling up to 8 s)
while the others keep serving: the kernel hands new connections only to listening sockets, and a
restarted worker listens only once its models are loaded, so no call or health check reaches a worker
that cannot answer. A worker that keeps dying (more than `--max-worker-restarts` times within a minute),
or one that dies before it ever served (a broken installation or repository: restarting cannot help),
makes the supervisor stop the others and exit 1, saying why, so an orchestrator restarts the whole server.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import multiprocessing
import multiprocessing.connection
import os
import queue
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

from prometheus_client.multiprocess import mark_process_dead

from cnnserve.serving.grpc.ports import claim_port
from cnnserve.serving.observability.logs import configure_logging
from cnnserve.serving.observability.statistics_exchange import socket_path
from cnnserve.serving.observability.tracing import TracingSettings
from cnnserve.serving.settings import ServerSettings

LOG = logging.getLogger(__name__)

FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 8.0
CRASH_WINDOW_S = 60.0


def _worker_main(
    settings: ServerSettings,
    tracing: TracingSettings,
    index: int,
    ready: Any,
    log_level: int,
    log_format: str,
) -> None:
    configure_logging(
        log_level,
        log_format,
        text_format=f"%(asctime)s %(levelname)s worker-{index} %(name)s: %(message)s",
        static={"worker": index},
    )
    from cnnserve.serving.grpc.server import run_server

    try:
        code = run_server(settings, tracing, ready=lambda port: ready.put((index, port)), claim=False)
    except Exception:
        logging.getLogger(__name__).exception("worker %d failed", index)
        code = 1
    sys.exit(code)


def describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


@dataclass
class _Worker:
    """One worker slot: its current process, whether that process served, and when the slot crashed."""

    index: int
    process: BaseProcess | None = None
    served: bool = False  # the current process said it serves
    ever_served: bool = False
    crashes: collections.deque[float] = field(default_factory=collections.deque)
    restart_at: float | None = None


class Supervisor:
    """Starts, watches and restarts the workers of one server; `run()` returns the exit code."""

    def __init__(
        self, settings: ServerSettings, metrics_dir: str, tracing: TracingSettings, log_format: str
    ) -> None:
        self.settings = settings
        self.metrics_dir = metrics_dir
        self.tracing = tracing
        self.log_format = log_format
        self.claimed = claim_port(settings.host, settings.port)
        self.port = self.claimed.getsockname()[1]
        # The HTTP port too: `--http-port 0` gives every worker the same one.
        self.claimed_http = (
            None if settings.http_port is None else claim_port(settings.host, settings.http_port)
        )
        self.http_port = None if self.claimed_http is None else self.claimed_http.getsockname()[1]
        # The plaintext health port (probes under TLS), claimed the same way so every worker answers on it.
        self.claimed_health = (
            None if settings.health_port is None else claim_port(settings.host, settings.health_port)
        )
        self.health_port = None if self.claimed_health is None else self.claimed_health.getsockname()[1]
        self.threads = settings.intra_op_threads()
        self.worker_settings = dataclasses.replace(
            settings,
            port=self.port,
            http_port=self.http_port,
            health_port=self.health_port,
            threads=self.threads,
            metrics_port=None,
            port_file=None,
        )
        self.context = multiprocessing.get_context("spawn")
        self.ready = self.context.Queue()
        self.workers = [_Worker(index) for index in range(settings.workers)]
        self.stopping = False
        self.failure = ""  # why the supervisor gave up ("" while it has not)
        self.announced = False

    def _spawn(self, worker: _Worker) -> None:
        process = self.context.Process(
            target=_worker_main,
            args=(
                self.worker_settings,
                self.tracing,
                worker.index,
                self.ready,
                logging.getLogger().getEffectiveLevel(),
                self.log_format,
            ),
            name=f"cnnserve-worker-{worker.index}",
        )
        process.start()
        worker.process, worker.served, worker.restart_at = process, False, None

    def stop(self, reason: str = "") -> None:
        """SIGTERM every worker (they finish their calls in flight); no worker is restarted any more."""
        if reason and not self.failure:
            self.failure = reason
        if not self.stopping:
            LOG.info("stopping %d workers", len(self.workers))
        self.stopping = True
        for worker in self.workers:
            worker.restart_at = None
            process = worker.process
            if process is not None and process.pid is not None and process.is_alive():
                os.kill(process.pid, signal.SIGTERM)

    def _forward(self, signum: int, frame: FrameType | None) -> None:
        LOG.info("received %s", signal.Signals(signum).name)
        self.stop()

    def run(self) -> int:
        previous = {s: signal.signal(s, self._forward) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            LOG.info(
                "starting %d workers on %s:%d, %d ONNX Runtime thread(s) each",
                len(self.workers),
                self.settings.host,
                self.port,
                self.threads,
            )
            for worker in self.workers:
                self._spawn(worker)
            self._serve_metrics()
            clean = True
            while True:
                running = [w for w in self.workers if w.process is not None]
                if not running and not any(w.restart_at is not None for w in self.workers):
                    break
                sentinels = [w.process.sentinel for w in running if w.process is not None]
                multiprocessing.connection.wait(sentinels, timeout=0.2)
                self._collect_ready()
                for worker in running:
                    assert worker.process is not None
                    if not worker.process.is_alive():
                        clean = self._reap(worker) and clean
                self._restart_due()
            if self.failure:
                LOG.error("%s", self.failure)
                return 1
            return 0 if clean else 1
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            self.claimed.close()
            if self.claimed_http is not None:
                self.claimed_http.close()
            if self.claimed_health is not None:
                self.claimed_health.close()
            self.ready.close()

    def _serve_metrics(self) -> None:
        if self.settings.metrics_port is None:
            return
        from prometheus_client import start_http_server

        from cnnserve.serving.observability.metrics import multiprocess_registry

        http, _ = start_http_server(
            self.settings.metrics_port,
            addr=self.settings.host,
            registry=multiprocess_registry(self.metrics_dir),
        )
        LOG.info(
            "Prometheus metrics of all workers on http://%s:%d/metrics", self.settings.host, http.server_port
        )

    def _collect_ready(self) -> None:
        while True:
            try:
                index, _ = self.ready.get_nowait()
            except queue.Empty:
                return
            worker = self.workers[index]
            if worker.ever_served and not worker.served:
                LOG.info("worker %d serves again", index)
            worker.served = worker.ever_served = True
            if not self.announced and all(w.ever_served for w in self.workers):
                self.announced = True
                LOG.info("all %d workers serving on %s:%d", len(self.workers), self.settings.host, self.port)
                if self.http_port is not None:
                    LOG.info(
                        "Open Inference Protocol over HTTP on http://%s:%d/v2",
                        self.settings.host,
                        self.http_port,
                    )
                if self.settings.port_file is not None:
                    from cnnserve.serving.grpc.server import write_port_file

                    write_port_file(self.settings.port_file, self.port)

    def _reap(self, worker: _Worker) -> bool:
        """A worker process ended: restart it, give up, or (stopping) note how it ended; False if unclean."""
        process = worker.process
        assert process is not None
        process.join()
        worker.process = None
        self._mark_dead(process.pid)
        how = describe_exit(process.exitcode)
        if self.stopping:
            if process.exitcode != 0:
                LOG.error("worker %d %s while stopping", worker.index, how)
            return process.exitcode == 0
        if not worker.ever_served:
            self.stop(f"worker {worker.index} {how} before it served; stopping the server")
            return False
        now = time.monotonic()
        worker.crashes.append(now)
        while worker.crashes and worker.crashes[0] < now - CRASH_WINDOW_S:
            worker.crashes.popleft()
        limit = self.settings.max_worker_restarts
        if len(worker.crashes) > limit:
            self.stop(
                f"worker {worker.index} {how}; it died {len(worker.crashes)} times within "
                f"{CRASH_WINDOW_S:.0f} s (more than --max-worker-restarts {limit}): giving up"
            )
            return False
        backoff = min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2 ** (len(worker.crashes) - 1))
        worker.restart_at = now + backoff
        LOG.error(
            "worker %d (pid %s) %s; the other workers keep serving; restarting it in %.1f s",
            worker.index,
            process.pid,
            how,
            backoff,
        )
        return True

    def _restart_due(self) -> None:
        now = time.monotonic()
        for worker in self.workers:
            if worker.restart_at is not None and now >= worker.restart_at and not self.stopping:
                LOG.info("restarting worker %d", worker.index)
                self._spawn(worker)

    def _mark_dead(self, pid: int | None) -> None:
        """Its live gauges (memory, fds, in flight) leave the summed /metrics (multiprocess mode), and its
        statistics the summed statistics extension."""
        if pid is not None:
            mark_process_dead(pid, self.metrics_dir)
            socket_path(self.metrics_dir, pid).unlink(missing_ok=True)


def run_supervisor(
    settings: ServerSettings, tracing: TracingSettings | None = None, log_format: str = "text"
) -> int:
    """Start settings.workers server processes and supervise them until they all stopped; the exit code.
    Each worker traces as `tracing` says (from the OTEL_* variables) and logs in `log_format`."""
    metrics_dir = tempfile.mkdtemp(prefix="cnnserve-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # inherited by the workers at spawn
    try:
        return Supervisor(settings, metrics_dir, tracing or TracingSettings(), log_format).run()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
