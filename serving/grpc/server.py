"""One serving process: the asyncio gRPC server, health, reflection, repository polling, graceful stop.

`InferenceServer` is what the tests start in-process; `run_server` is one worker of `cnnserve serve`
(the supervisor in `supervisor.py` runs several, all bound to the same port with SO_REUSEPORT).
Shutdown: health flips to NOT_SERVING, new calls are refused with UNAVAILABLE, calls in flight finish
(up to the grace period), then the batchers drain and the process exits 0 -- from the running event loop
and without gRPC's own shutdown, which would cancel (CANCELLED) the calls that reach it in the instant it
starts: the connections close with the process instead, so such a call fails UNAVAILABLE, which clients
retry. A server claims its ports first (`ports.claim_port`), so it refuses ones another process holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NoReturn

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from cnnserve.protos import inference_pb2, inference_pb2_grpc, oip_pb2_grpc
from cnnserve.serving.batching import loop_load
from cnnserve.serving.core.calls import CallHook, CallHooks, Drain
from cnnserve.serving.core.dataplane import DataPlane
from cnnserve.serving.core.decode_budget import DecodeBudget
from cnnserve.serving.core.inputs import RequestLimits
from cnnserve.serving.core.registry import AVAILABLE, BatchOverrides, ModelRegistry
from cnnserve.serving.grpc import oip_servicer
from cnnserve.serving.grpc.credentials import server_credentials
from cnnserve.serving.grpc.interceptors import CallRunner, MalformedRequestInterceptor
from cnnserve.serving.grpc.methods import InferenceMethods
from cnnserve.serving.grpc.ports import claim_port
from cnnserve.serving.grpc.servicer import PROTOCOL, EchoServicer, InferenceServicer
from cnnserve.serving.http.json_api import JsonEndpoints
from cnnserve.serving.http.oip import EchoHttpEndpoints, OipHttpEndpoints, error_response
from cnnserve.serving.http.server import HttpLimits, HttpServer
from cnnserve.serving.memory import return_big_buffers_to_the_system
from cnnserve.serving.model.runtime import SessionOptions
from cnnserve.serving.observability import resources
from cnnserve.serving.observability.calls import CallObservation
from cnnserve.serving.observability.logs import enable_access_log
from cnnserve.serving.observability.metrics import (
    RESOURCE_INTERVAL_S,
    UNLOADED,
    CallMetrics,
    ServingMetrics,
    multiprocess_dir,
)
from cnnserve.serving.observability.statistics import BatchObservers, StatisticsBook, StatisticsHook
from cnnserve.serving.observability.statistics_exchange import StatisticsExchange
from cnnserve.serving.observability.tracing import Tracing, TracingSettings, start_tracing
from cnnserve.serving.security.gate import Gate, GatePolicy
from cnnserve.serving.security.tls import TlsWatcher, server_ssl_context, tls_files
from cnnserve.serving.security.tokens import TokenStore
from cnnserve.serving.settings import ServerSettings, available_cpus
from cnnserve.serving.ui.page import ExplorerPage

LOG = logging.getLogger(__name__)

SERVICE_NAME = inference_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# The name Kubernetes' liveness and startup probes ask about (docker/k8s/): SERVING from the moment the port
# is bound until shutdown, models or not, so that an empty repository never makes a pod crash-loop.
LIVENESS_SERVICE = "liveness"
# After the calls in flight finished: how long streams such as health Watch may linger before cancelling.
STOP_GRACE_SECONDS = 0.5
# On a worker with one core, a batch expected to compute within this long runs on the event loop.
INLINE_COMPUTE_S = 0.001


def grpc_options(settings: ServerSettings) -> list[tuple[str, int]]:
    """The transport's limits: message and metadata sizes, streams per connection, connection age,
    keepalive (the server's pings, and how often a client may ping)."""
    return [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        # Soft and hard limit alike: over it, every call is refused (between the two gRPC refuses some).
        ("grpc.max_metadata_size", settings.max_metadata_bytes),
        ("grpc.absolute_max_metadata_size", settings.max_metadata_bytes),
        ("grpc.so_reuseport", 1),
        ("grpc.max_concurrent_streams", settings.max_streams_per_connection),
        ("grpc.max_connection_age_ms", round(settings.max_connection_age_s * 1000)),
        ("grpc.max_connection_age_grace_ms", round(settings.max_connection_age_grace_s * 1000)),
        ("grpc.keepalive_time_ms", round(settings.keepalive_time_s * 1000)),
        ("grpc.keepalive_timeout_ms", round(settings.keepalive_timeout_s * 1000)),
        # Clients may ping (also between calls) at most this often; after 2 strikes: GOAWAY too_many_pings.
        ("grpc.http2.min_ping_interval_without_data_ms", round(settings.min_ping_interval_s * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_ping_strikes", 2),
    ]


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


def is_loopback(host: str) -> bool:
    return host in LOOPBACK_HOSTS or host.startswith("127.")


class InferenceServer:
    """The server of one process over one model repository: gRPC (cnnserve.v1 and the Open Inference
    Protocol), and with `settings.http_port` the Open Inference Protocol over HTTP on the same event loop;
    `tracing` traces its calls (None: off)."""

    def __init__(
        self,
        settings: ServerSettings,
        cpu_count: int | None = None,
        tracing: Tracing | None = None,
        claim: bool = True,
    ) -> None:
        """`claim`: claim the ports before binding (False: a supervisor holds them for its workers)."""
        self.settings = settings
        self.tracing = tracing
        self.claim = claim
        self._claimed: list[socket.socket] = []
        self.metrics = ServingMetrics()
        self.statistics = StatisticsBook()
        # With several workers, a statistics request answers every worker's figures summed.
        self.statistics_exchange = StatisticsExchange(self.statistics, multiprocess_dir())
        threads = settings.intra_op_threads(cpu_count)
        # A worker with at most one core to itself decodes big requests on its event loop (see core/inputs)
        # and runs quick batches there too (see batcher): a thread would add hand-offs, not a core.
        one_core = (cpu_count or available_cpus()) / max(1, settings.workers) <= 1.0
        # ONNX Runtime runs one batch per model at a time; the other threads decode big requests.
        self.executor = ThreadPoolExecutor(max_workers=threads + 2, thread_name_prefix="cnnserve")
        self.registry = ModelRegistry(
            settings.repo,
            self.executor,
            SessionOptions(device=settings.device, intra_op_threads=threads, allow_spinning=False),
            BatchOverrides(
                max_batch_size=settings.max_batch_size,
                max_queue_delay_us=settings.max_queue_delay_us,
                max_queue_size=settings.max_queue_size,
                enabled=settings.batching,
                adaptive=settings.batch_wait == "adaptive",
                inline_compute_s=INLINE_COMPUTE_S if one_core else 0.0,
            ),
            observer_for=self._batch_observer,
            on_event=self._model_event,
        )
        self.dataplane = DataPlane(
            self.registry,
            self.executor,
            RequestLimits(settings.max_images, settings.max_pixels, settings.request_pixels),
            decode_on_loop=one_core,
            decode_budget=DecodeBudget(settings.decode_pixels),
        )
        # TLS material and the token file are read (and checked) now: a bad file stops the server at once.
        self.tls = None if settings.tls_cert is None else TlsWatcher(tls_files(settings))
        self.gate = (
            Gate(
                GatePolicy(
                    tokens=None if settings.auth_tokens is None else TokenStore(settings.auth_tokens),
                    mutual_tls=settings.tls_client_ca is not None,
                    max_in_flight_per_client=settings.max_in_flight_per_client,
                ),
                on_refused=lambda client, method, code: self.metrics.refused.labels(
                    client, method, code
                ).inc(),
            )
            if settings.authenticates
            else None
        )
        # What every call of every protocol goes through (see core/calls.py): tracing and the access log when
        # either is on (first, so they see every other hook's work, the client's name included), metrics,
        # authentication (when configured), then the drain gate.
        self.drain = Drain()
        hooks: list[CallHook] = [CallMetrics(self.metrics, self.registry.known.__contains__)]
        if self.gate is not None:
            hooks.append(self.gate)  # before the statistics: a refused call is no inference of the model's
        self.hooks = CallHooks([*hooks, StatisticsHook(self.statistics), self.drain])
        access_log = enable_access_log() if settings.access_log else None
        if tracing is not None or access_log is not None:
            self.hooks.hooks = (CallObservation(tracing, access_log), *self.hooks.hooks)
        self.runner = CallRunner(self.hooks, PROTOCOL)
        self.servicer: InferenceServicer | EchoServicer = (
            EchoServicer() if settings.echo else InferenceServicer(self.dataplane, self.runner)
        )
        self.oip_servicer: oip_servicer.OipServicer | oip_servicer.OipEchoServicer = (
            oip_servicer.OipEchoServicer()
            if settings.echo
            else oip_servicer.OipServicer(
                self.dataplane, CallRunner(self.hooks, oip_servicer.PROTOCOL), self.statistics_exchange
            )
        )
        self.http: HttpServer | None = None
        if settings.http_port is not None:
            endpoints = (
                EchoHttpEndpoints()
                if settings.echo
                else OipHttpEndpoints(self.dataplane, self.hooks, self.statistics_exchange)
            )
            router = endpoints.router()
            if not settings.echo:
                JsonEndpoints(InferenceMethods(self.dataplane), self.hooks).add_routes(router)
                if settings.ui:
                    ExplorerPage().add_routes(router)
            self.http = HttpServer(
                router, error_response, HttpLimits(max_body_bytes=settings.max_message_bytes)
            )
        self.http_port = 0
        self.health = HealthServicer()
        self.port = 0
        self.health_port = 0
        self._server: grpc.aio.Server | None = None
        self._health_server: grpc.aio.Server | None = None
        self._stop_polling = asyncio.Event()
        self._polling: asyncio.Task[None] | None = None
        self._sampling: asyncio.Task[None] | None = None
        self._gpus: resources.GpuProbe | None = None
        self._stopping = False
        self._health_names: set[str] = set()

    def _batch_observer(self, name: str, version: int) -> BatchObservers:
        return BatchObservers(
            self.metrics.for_model(name, version), self.statistics.for_version(name, version)
        )

    async def start(self) -> int:
        """Bind, load the repository, then answer (health NOT_SERVING until a model loads); the port."""
        load = loop_load.for_loop(asyncio.get_running_loop())
        self.registry.load = None if load is None else load.busy
        port, http_port, health_port = self.settings.port, self.settings.http_port, self.settings.health_port
        if self.claim:
            port = self._claim(port)
            http_port = None if http_port is None else self._claim(http_port)
            health_port = None if health_port is None else self._claim(health_port)
        server = grpc.aio.server(
            options=grpc_options(self.settings), interceptors=[MalformedRequestInterceptor()]
        )
        inference_pb2_grpc.add_InferenceServiceServicer_to_server(self.servicer, server)
        oip_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(self.oip_servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        if self.settings.reflection:
            reflection.enable_server_reflection(
                (
                    SERVICE_NAME,
                    oip_servicer.SERVICE_NAME,
                    health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                    reflection.SERVICE_NAME,
                ),
                server,
            )
        address = f"{self.settings.host}:{port}"
        if self.tls is None:
            self.port = server.add_insecure_port(address)
        else:
            self.port = server.add_secure_port(address, server_credentials(self.tls))
        if self.port == 0:
            raise OSError(f"cannot bind gRPC port {address}")
        await self._set_health("", NOT_SERVING)
        await self._set_health(LIVENESS_SERVICE, SERVING)
        if self.settings.echo:
            await self._set_health("", SERVING)
            await self._set_health(SERVICE_NAME, SERVING)
        else:
            # Load the repository before listening: with several workers on one port, the kernel only hands
            # connections to listening sockets, so no call (or health probe) reaches a worker still loading.
            await self.poll()
            await self.statistics_exchange.start()
        await server.start()
        self._server = server
        if health_port is not None:  # like the main port: listening once loaded, not before
            await self._start_health_port(health_port)
        LOG.info("gRPC server listening on %s:%d (%s)", self.settings.host, self.port, self._security())
        if self.http is not None and http_port is not None:
            # The HTTP port has the same TLS (and rotation) as the gRPC port, and the same call hooks.
            ssl_context = None if self.tls is None else server_ssl_context(self.tls)
            self.http_port = await self.http.start(self.settings.host, http_port, ssl_context)
            LOG.info(
                "Open Inference Protocol over HTTP on %s://%s:%d/v2",
                "http" if ssl_context is None else "https",
                self.settings.host,
                self.http_port,
            )
        if not is_loopback(self.settings.host) and not (self.settings.tls or self.settings.authenticates):
            LOG.warning(
                "listening on %s:%d with neither TLS nor tokens: anyone who can reach the port can read "
                "every image and call every method (see --tls-cert, --tls-key, --auth-tokens)",
                self.settings.host,
                self.port,
            )
            if self.settings.ui and not self.settings.echo:
                LOG.info("model explorer on http://%s:%d/", self.settings.host, self.http_port)
        if self.settings.echo:
            return self.port
        if not self.registry.model_names() and Path(self.settings.repo).is_dir():
            LOG.warning(
                "model repository %s is empty: serving nothing until a model appears (polling)",
                self.settings.repo,
            )
        self._polling = asyncio.get_running_loop().create_task(self._poll_loop())
        self._sampling = asyncio.get_running_loop().create_task(self._sample_loop())
        return self.port

    def _claim(self, port: int) -> int:
        claimed = claim_port(self.settings.host, port)
        self._claimed.append(claimed)
        return int(claimed.getsockname()[1])

    def _model_event(self, name: str, version: int, event: str) -> None:
        self.metrics.model_event(name, version, event)
        if event == UNLOADED:
            self.metrics.forget_version(name, version)

    def sample_resources(self) -> None:
        """Read the process's memory and file descriptors, every model version's queue depth and, once a
        CUDA session is loaded, its GPUs into the metrics."""
        self.metrics.observe_process(resources.process_sample())
        cuda = False
        for loaded in self.registry.loaded_models():
            batcher = loaded.batcher
            self.metrics.observe_queue(
                loaded.name, loaded.version, batcher.queued_images, batcher.settings.max_queue_images
            )
            cuda = cuda or loaded.runtime.providers[0] == "CUDAExecutionProvider"
        if cuda and self._gpus is None:
            self._gpus = resources.GpuProbe()
        if self._gpus is not None:
            self.metrics.observe_gpus(self._gpus.sample())

    async def _sample_loop(self) -> None:
        started = resources.process_start_time()
        if started is not None:
            self.metrics.start_time.set(started)
        while not self._stop_polling.is_set():
            try:
                self.sample_resources()
            except Exception:  # a failed reading must not take the server down
                LOG.exception("reading the process's resources failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_polling.wait(), RESOURCE_INTERVAL_S)

    def _security(self) -> str:
        settings = self.settings
        transport = "plaintext" if not settings.tls else "mutual TLS" if settings.tls_client_ca else "TLS"
        tokens = f", tokens from {settings.auth_tokens}" if settings.auth_tokens is not None else ""
        return transport + tokens

    async def _start_health_port(self, port: int) -> None:
        """A second, plaintext server answering grpc.health.v1 only: Kubernetes' gRPC probes cannot do TLS."""
        health = grpc.aio.server(
            options=[("grpc.so_reuseport", 1), ("grpc.max_receive_message_length", 4096)]
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, health)
        address = f"{self.settings.host}:{port}"
        self.health_port = health.add_insecure_port(address)
        if self.health_port == 0:
            raise OSError(f"cannot bind the health port {address}")
        await health.start()
        self._health_server = health
        LOG.info(
            "health checks (grpc.health.v1 only, plaintext) on %s:%d", self.settings.host, self.health_port
        )

    async def poll(self) -> None:
        """Poll the repository once and bring health in step."""
        await self.registry.poll()
        await self._update_health()

    async def _poll_loop(self) -> None:
        interval = self.settings.poll_interval
        if interval <= 0:
            return
        while not self._stop_polling.is_set():
            try:
                await asyncio.wait_for(self._stop_polling.wait(), interval)
                return
            except TimeoutError:
                pass
            try:
                await self.poll()
            except Exception:  # a failed poll must not take the server down
                LOG.exception("polling the model repository %s failed", self.settings.repo)

    async def _set_health(self, service: str, status: int) -> None:
        await self.health.set(service, status)

    async def _update_health(self) -> None:
        if self._stopping:
            return
        available = set(self.registry.available_models())
        names = set(self.registry.model_names()) | self._health_names
        statuses = self.registry.statuses()
        for name in names:
            await self._set_health(name, SERVING if name in available else NOT_SERVING)
            loaded = sum(1 for s in statuses.get(name, []) if s.state == AVAILABLE)
            self.metrics.model_versions.labels(name).set(loaded)
        self._health_names = names
        overall = SERVING if available else NOT_SERVING
        await self._set_health("", overall)
        await self._set_health(SERVICE_NAME, overall)
        await self._set_health(oip_servicer.SERVICE_NAME, overall)

    async def stop(self, grace: float | None = None, *, close_transport: bool = True) -> None:
        """Graceful stop: NOT_SERVING, refuse new calls, let calls in flight finish, unload.

        `close_transport=False` leaves the gRPC server as it is, for a process about to exit: its
        connections then close with the process (see the module doc)."""
        if self._stopping:
            return
        self._stopping = True
        grace = self.settings.grace_seconds if grace is None else grace
        LOG.info("shutting down: refusing new calls, waiting up to %.0f s for calls in flight", grace)
        await self.health.enter_graceful_shutdown()
        self._stop_polling.set()
        # The transport stays up while the calls in flight finish, so a new call gets a clean UNAVAILABLE
        # from the servicer rather than a connection torn down under it.
        if isinstance(self.servicer, EchoServicer):
            self.servicer.stopping = True
        if isinstance(self.oip_servicer, oip_servicer.OipEchoServicer):
            self.oip_servicer.stopping = True
        await self.drain.drain(grace)
        if self.http is not None:
            await self.http.stop(STOP_GRACE_SECONDS)
        if self._polling is not None:
            await self._polling
        if self._sampling is not None:
            await self._sampling
        if self._gpus is not None:
            self._gpus.close()
        if self._server is not None and close_transport:
            await self._server.stop(STOP_GRACE_SECONDS)
        if self._health_server is not None:
            await self._health_server.stop(0)
        await self.statistics_exchange.close()
        await self.registry.close()
        self.executor.shutdown(wait=True, cancel_futures=True)
        if close_transport:
            for claimed in self._claimed:
                claimed.close()
        LOG.info("server stopped")


def _start_metrics_http(settings: ServerSettings, server: InferenceServer) -> None:
    if settings.metrics_port is None or multiprocess_dir() is not None:
        return  # none wanted, or the supervisor serves every worker's metrics
    from prometheus_client import start_http_server

    http, _ = start_http_server(settings.metrics_port, addr=settings.host, registry=server.metrics.registry)
    LOG.info("Prometheus metrics on http://%s:%d/metrics", settings.host, http.server_port)


async def serve(
    settings: ServerSettings,
    ready: Callable[[int], None] | None = None,
    tracing_settings: TracingSettings | None = None,
    claim: bool = True,
) -> int:
    """Run one server until SIGTERM or SIGINT, stop gracefully, then end the process (exit code 0) from the
    running event loop, without gRPC's own shutdown (see the module doc): up to the last instant, a call
    that arrives is refused UNAVAILABLE, and the connections close with the process."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    tracing = start_tracing(tracing_settings) if tracing_settings is not None else None
    server = InferenceServer(settings, tracing=tracing, claim=claim)
    try:
        port = await server.start()
    except Exception:
        await server.stop(0)
        if tracing is not None:
            tracing.shutdown()
        raise
    _start_metrics_http(settings, server)
    if settings.port_file is not None:
        write_port_file(settings.port_file, port)
    if ready is not None:
        ready(port)
    await stop.wait()
    await server.stop(close_transport=False)
    if tracing is not None:
        tracing.shutdown()  # exports the spans still buffered
    exit_closing_connections(0)


def write_port_file(path: Path, port: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{port}\n", encoding="utf-8")
    tmp.replace(path)


def run_server(
    settings: ServerSettings,
    tracing_settings: TracingSettings | None = None,
    ready: Callable[[int], None] | None = None,
    claim: bool = True,
) -> int:
    """One server process until it is stopped: the process then ends (this only returns, or raises, when
    the server fails to start); `tracing_settings` from the OTEL_* variables (None: off); `claim`: claim
    the ports first (False: a supervisor holds them)."""
    return_big_buffers_to_the_system()
    with asyncio.Runner(loop_factory=loop_load.new_event_loop) as runner:  # a loop that meters its load
        return runner.run(serve(settings, ready, tracing_settings, claim))


def exit_closing_connections(code: int) -> NoReturn:
    """End the process now: the kernel closes every connection, so a call still arriving fails UNAVAILABLE,
    which clients retry (gRPC's own shutdown cancels such calls: CANCELLED, measured on one in two SIGTERMs
    under load). Logs and standard streams are flushed first."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
