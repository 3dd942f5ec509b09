"""`cnnserve serve --workers N`: N server processes sharing one port, so the GIL never caps the server.

Each worker is a separate process (spawned, not forked: gRPC and ONNX Runtime threads do not survive a
fork) with its own sessions, bound to the same port with SO_REUSEPORT; the kernel spreads connections
over them. The supervisor reserves the port first (so `--port 0` gives every worker the same one),
serves the summed Prometheus metrics of all workers (multiprocess mode), forwards SIGTERM/SIGINT, and
exits 0 when every worker stopped cleanly. A worker that dies on its own takes the others down with a
non-zero exit, so an orchestrator restarts the whole server rather than running it half-sized.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import multiprocessing.connection
import os
import queue
import shutil
import signal
import socket
import sys
import tempfile
from types import FrameType
from typing import Any

from prometheus_client.multiprocess import mark_process_dead

from cnnserve.serving.observability.logs import configure_logging
from cnnserve.serving.observability.tracing import TracingSettings
from cnnserve.serving.settings import ServerSettings

LOG = logging.getLogger(__name__)


def reserve_port(host: str, port: int) -> socket.socket:
    """A bound, non-listening SO_REUSEPORT socket holding the port for the workers."""
    family, kind, proto, _, address = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    return sock


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
        code = run_server(settings, tracing, ready=lambda port: ready.put((index, port)))
    except Exception:
        logging.getLogger(__name__).exception("worker %d failed", index)
        code = 1
    sys.exit(code)


def run_supervisor(
    settings: ServerSettings, tracing: TracingSettings | None = None, log_format: str = "text"
) -> int:
    """Start settings.workers server processes and supervise them until they all stopped; the exit code.
    Each worker traces as `tracing` says (from the OTEL_* variables) and logs in `log_format`."""
    metrics_dir = tempfile.mkdtemp(prefix="cnnserve-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # inherited by the workers at spawn
    reserved = reserve_port(settings.host, settings.port)
    port = reserved.getsockname()[1]
    # The HTTP port too: `--http-port 0` gives every worker the same one, and a port taken by another
    # program fails here rather than being shared with it silently (SO_REUSEPORT).
    reserved_http = None if settings.http_port is None else reserve_port(settings.host, settings.http_port)
    http_port = None if reserved_http is None else reserved_http.getsockname()[1]
    threads = settings.intra_op_threads()
    worker_settings = dataclasses.replace(
        settings, port=port, http_port=http_port, threads=threads, metrics_port=None, port_file=None
    )
    context = multiprocessing.get_context("spawn")
    ready = context.Queue()
    workers = [
        context.Process(
            target=_worker_main,
            args=(
                worker_settings,
                tracing or TracingSettings(),
                index,
                ready,
                logging.getLogger().getEffectiveLevel(),
                log_format,
            ),
            name=f"cnnserve-worker-{index}",
        )
        for index in range(settings.workers)
    ]
    stopping = False
    failed = False

    def forward(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        if not stopping:
            LOG.info("received %s: stopping %d workers", signal.Signals(signum).name, len(workers))
        stopping = True
        for worker in workers:
            if worker.pid is not None and worker.is_alive():
                os.kill(worker.pid, signal.SIGTERM)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        LOG.info(
            "starting %d workers on %s:%d, %d ONNX Runtime thread(s) each",
            len(workers),
            settings.host,
            port,
            threads,
        )
        for worker in workers:
            worker.start()
        if settings.metrics_port is not None:
            from prometheus_client import start_http_server

            from cnnserve.serving.observability.metrics import multiprocess_registry

            http, _ = start_http_server(
                settings.metrics_port, addr=settings.host, registry=multiprocess_registry(metrics_dir)
            )
            LOG.info(
                "Prometheus metrics of all workers on http://%s:%d/metrics", settings.host, http.server_port
            )
        started: set[int] = set()
        alive = list(workers)
        while alive:
            sentinels = [w.sentinel for w in alive]
            multiprocessing.connection.wait(sentinels, timeout=0.2)
            while True:
                try:
                    index, _ = ready.get_nowait()
                except queue.Empty:
                    break
                started.add(index)
                if len(started) == len(workers):
                    LOG.info("all %d workers serving on %s:%d", len(workers), settings.host, port)
                    if http_port is not None:
                        LOG.info(
                            "Open Inference Protocol over HTTP on http://%s:%d/v2", settings.host, http_port
                        )
                    if settings.port_file is not None:
                        from cnnserve.serving.grpc.server import write_port_file

                        write_port_file(settings.port_file, port)
            for worker in [w for w in alive if not w.is_alive()]:
                alive.remove(worker)
                if worker.pid is not None:  # its live gauges (memory, fds, in flight) leave /metrics
                    mark_process_dead(worker.pid, metrics_dir)
                if worker.exitcode != 0 or not stopping:
                    failed = True
                    LOG.error("%s exited with code %s", worker.name, worker.exitcode)
                    if not stopping:
                        forward(signal.SIGTERM, None)
        return 1 if failed else 0
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        reserved.close()
        if reserved_http is not None:
            reserved_http.close()
        ready.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
