"""`cnnserve serve`: the server, with every option also read from a CNNSERVE_* variable (the flag wins).

Standard library only at import time; gRPC, numpy and ONNX Runtime load inside the handler.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

LOG = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve a model repository over gRPC and HTTP (ONNX Runtime, dynamic batching)",
        description="Serve a model repository over gRPC (cnnserve.v1 and the Open Inference Protocol, "
        "KServe v2) and, with --http-port, the Open Inference Protocol over HTTP/REST. Every option "
        "defaults to its CNNSERVE_* environment variable (e.g. CNNSERVE_PORT), then to the value shown. "
        "Tracing is configured by the standard OpenTelemetry variables: OTEL_TRACES_EXPORTER (otlp, console "
        "or none: the default), OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_SERVICE_NAME, OTEL_TRACES_SAMPLER and "
        "OTEL_TRACES_SAMPLER_ARG.",
    )
    add = parser.add_argument
    add("--repo", type=Path, help="model repository folder [CNNSERVE_REPO]")
    add("--host", help="address to bind (default 0.0.0.0) [CNNSERVE_HOST]")
    add("--port", help="gRPC port, 0 = ephemeral (default 8500) [CNNSERVE_PORT]")
    add(
        "--http-port",
        help="Open Inference Protocol HTTP/REST port, 0 = ephemeral (default: off) [CNNSERVE_HTTP_PORT]",
    )
    add(
        "--ui",
        action="store_const",
        const="true",
        help="serve the model explorer page at / on the HTTP port (needs --http-port) [CNNSERVE_UI]",
    )
    add("--workers", help="server processes sharing the port (default: CPU count) [CNNSERVE_WORKERS]")
    add("--threads", help="ONNX Runtime threads per worker (default: cores / workers) [CNNSERVE_THREADS]")
    add("--device", help="auto, cpu or cuda (default auto) [CNNSERVE_DEVICE]")
    add(
        "--metrics-port",
        help="Prometheus /metrics port, 0 = ephemeral (default: off) [CNNSERVE_METRICS_PORT]",
    )
    add(
        "--poll-interval",
        help="seconds between repository polls, 0 = never (default 5) [CNNSERVE_POLL_INTERVAL]",
    )
    add("--max-batch-size", help="override every config's max_batch_size [CNNSERVE_MAX_BATCH_SIZE]")
    add("--max-queue-delay-us", help="override the batching delay in µs [CNNSERVE_MAX_QUEUE_DELAY_US]")
    add("--max-queue-size", help="override the queue bound in images [CNNSERVE_MAX_QUEUE_SIZE]")
    add(
        "--no-batching",
        dest="batching",
        action="store_const",
        const="false",
        help="run every request alone, never merged [CNNSERVE_BATCHING=false]",
    )
    add(
        "--batch-wait",
        help="adaptive: a batch waits, at most max_queue_delay, only while more requests are to be expected "
        "(some are being decoded, or traffic is concurrent and not every recent client has one waiting), "
        "and under concurrent traffic only as much of the delay as the worker is busy (default); "
        "fixed: always waits max_queue_delay to fill [CNNSERVE_BATCH_WAIT]",
    )
    add("--max-message-bytes", help="largest request accepted (default 64 MiB) [CNNSERVE_MAX_MESSAGE_BYTES]")
    add("--max-images", help="images per request (default 256) [CNNSERVE_MAX_IMAGES]")
    add("--max-pixels", help="pixels per image, checked before decoding (default 50M) [CNNSERVE_MAX_PIXELS]")
    add(
        "--max-request-pixels",
        help="pixels one request's images may hold in all, from their headers (default: 100M, at least twice "
        "--max-pixels) [CNNSERVE_MAX_REQUEST_PIXELS]",
    )
    add(
        "--max-decode-pixels",
        help="pixels a worker decodes at once over all requests; the others wait their turn (default: 200M, "
        "at least twice --max-request-pixels) [CNNSERVE_MAX_DECODE_PIXELS]",
    )
    add(
        "--max-worker-restarts",
        help="restarts of a crashed worker within a minute before the server gives up and exits 1 "
        "(default 5) [CNNSERVE_MAX_WORKER_RESTARTS]",
    )
    add("--grace-seconds", help="how long calls in flight may finish at shutdown (default 30)")
    add(
        "--access-log",
        action="store_const",
        const="true",
        help="log one line per call: method, model, version, images, status, latency, queue and compute "
        "time, batch size, peer, client, trace id (default off) [CNNSERVE_ACCESS_LOG=true]",
    )
    security = parser.add_argument_group(
        "security", "TLS, mutual TLS and token authentication (see README, Securing the server)"
    )
    sec = security.add_argument
    sec(
        "--tls-cert",
        metavar="PEM",
        help="PEM certificate chain: serve TLS (re-read when it changes) [CNNSERVE_TLS_CERT]",
    )
    sec("--tls-key", metavar="PEM", help="PEM private key of --tls-cert [CNNSERVE_TLS_KEY]")
    sec(
        "--tls-client-ca",
        metavar="PEM",
        help="PEM CA: require client certificates it signed (mutual TLS) [CNNSERVE_TLS_CLIENT_CA]",
    )
    sec(
        "--auth-tokens",
        metavar="FILE",
        help="token file (`cnnserve token add`): every call needs a token or a named client certificate "
        "with its method's scope; re-read when it changes [CNNSERVE_AUTH_TOKENS]",
    )
    sec(
        "--no-reflection",
        dest="reflection",
        action="store_const",
        const="false",
        help="do not serve gRPC server reflection [CNNSERVE_REFLECTION=false]",
    )
    sec(
        "--health-port",
        metavar="PORT",
        help="also answer grpc.health.v1 (only) in plaintext on this port, for probes that cannot do TLS "
        "(default: off) [CNNSERVE_HEALTH_PORT]",
    )
    limits = parser.add_argument_group("limits", "per connection, per call and per client")
    lim = limits.add_argument
    lim(
        "--max-streams-per-connection",
        metavar="N",
        help="concurrent calls on one connection; more wait client-side (default 128) "
        "[CNNSERVE_MAX_STREAMS_PER_CONNECTION]",
    )
    lim(
        "--max-connection-age",
        metavar="SECONDS",
        dest="max_connection_age_s",
        help="seconds before a connection is closed so clients rebalance (default 300) "
        "[CNNSERVE_MAX_CONNECTION_AGE]",
    )
    lim(
        "--max-connection-age-grace",
        metavar="SECONDS",
        dest="max_connection_age_grace_s",
        help="seconds calls in flight get after that (default 30) [CNNSERVE_MAX_CONNECTION_AGE_GRACE]",
    )
    lim(
        "--keepalive-time",
        metavar="SECONDS",
        dest="keepalive_time_s",
        help="seconds of quiet before the server pings a connection (default 120) [CNNSERVE_KEEPALIVE_TIME]",
    )
    lim(
        "--keepalive-timeout",
        metavar="SECONDS",
        dest="keepalive_timeout_s",
        help="seconds an unanswered ping keeps a connection (default 20) [CNNSERVE_KEEPALIVE_TIMEOUT]",
    )
    lim(
        "--min-ping-interval",
        metavar="SECONDS",
        dest="min_ping_interval_s",
        help="clients pinging more often than this many seconds are disconnected (default 10) "
        "[CNNSERVE_MIN_PING_INTERVAL]",
    )
    lim(
        "--max-metadata-bytes",
        metavar="BYTES",
        help="call metadata (headers) size (default 16 KiB) [CNNSERVE_MAX_METADATA_BYTES]",
    )
    lim(
        "--max-in-flight-per-client",
        metavar="N",
        help="calls in flight per authenticated client, 0 = no cap; over it: RESOURCE_EXHAUSTED "
        "(default 256) [CNNSERVE_MAX_IN_FLIGHT_PER_CLIENT]",
    )
    add("--port-file", type=Path, help="write the bound port to this file once serving")
    add(
        "--echo",
        action="store_true",
        default=None,
        help="answer Classify and ModelInfer without work (transport benchmark)",
    )
    parser.set_defaults(handler=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    from cnnserve.serving.errors import SettingsError
    from cnnserve.serving.settings import FIELDS, resolve

    flags = {name: getattr(args, name, None) for name in FIELDS}
    flags["echo"] = args.echo
    flags["port_file"] = args.port_file
    try:
        settings = resolve(flags)
    except SettingsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from cnnserve.serving.security.startup import check_security_files

    try:
        check_security_files(settings)
    except SettingsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from cnnserve.serving.observability.logs import resolve_log_format
    from cnnserve.serving.observability.tracing import TracingConfigError, require_exporters, tracing_settings

    try:
        tracing = tracing_settings()
        require_exporters(tracing)
    except TracingConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from cnnserve.serving.errors import DeviceUnavailableError
    from cnnserve.serving.model.runtime import choose_providers

    try:
        providers = choose_providers(settings.device)
    except DeviceUnavailableError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    LOG.info(
        "serving %s with %d worker(s) on %s, execution providers %s",
        settings.repo,
        settings.workers,
        settings.device,
        ", ".join(providers),
    )
    try:
        if settings.workers > 1:
            from cnnserve.serving.grpc.supervisor import run_supervisor

            log_format = resolve_log_format(getattr(args, "log_format", None))
            return run_supervisor(settings, tracing, log_format)
        from cnnserve.serving.grpc.server import run_server

        return run_server(settings, tracing)
    except OSError as error:  # the port is taken, or cannot be bound
        print(f"error: {error}", file=sys.stderr)
        return 1
