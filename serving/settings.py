"""Every serving default, written once, and the server's settings from flags and `CNNSERVE_*` variables.

Standard library only: `cnnserve serve` parses and validates these before importing gRPC or ONNX Runtime
(and export reads the batching defaults without numpy), so a bad value (a non-numeric CNNSERVE_PORT,
workers <= 0) fails at once with a message naming it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnnserve.serving.errors import SettingsError

# -- the server ----------------------------------------------------------------------------------------
DEFAULT_PORT = 8500
DEFAULT_HOST = "0.0.0.0"
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # requests and responses, server and client alike
DEFAULT_POLL_INTERVAL = 5.0
DEFAULT_GRACE_SECONDS = 30.0

# -- limits against abuse (per connection, per call, per client); none of them binds a well-behaved client
DEFAULT_MAX_STREAMS_PER_CONNECTION = 128  # concurrent calls on one HTTP/2 connection; more wait client-side
# Connections are closed after this long (calls in flight get the grace period more), so that clients
# balancing per call over a headless Service re-resolve and spread onto replicas added since they connected.
DEFAULT_MAX_CONNECTION_AGE_S = 300.0
DEFAULT_MAX_CONNECTION_AGE_GRACE_S = 30.0
DEFAULT_KEEPALIVE_TIME_S = 120.0  # the server pings a connection quiet this long, to find dead peers
DEFAULT_KEEPALIVE_TIMEOUT_S = 20.0  # ... and closes it when the ping goes unanswered this long
DEFAULT_MIN_PING_INTERVAL_S = 10.0  # a client pinging more often than this is disconnected
DEFAULT_MAX_METADATA_BYTES = 16 * 1024  # request headers (metadata) per call
DEFAULT_MAX_IN_FLIGHT_PER_CLIENT = (
    256  # calls in flight per authenticated client; over it: RESOURCE_EXHAUSTED
)

# -- requests ------------------------------------------------------------------------------------------
DEFAULT_MAX_IMAGES = 256  # images per request
# Pixel count beyond which an image is refused from its header, before its pixels are decoded.
DEFAULT_MAX_PIXELS = 50_000_000
# Pixels (declared by the images' headers) one request may hold, and one worker may decode at once across
# requests; 0 = derived: at least twice --max-pixels per request and twice the request budget per worker.
DEFAULT_MAX_REQUEST_PIXELS = 100_000_000
DEFAULT_MAX_DECODE_PIXELS = 200_000_000
# A worker that died is restarted; one that dies more often than this within a minute makes the server
# give up (exit 1) rather than crash-loop.
DEFAULT_MAX_WORKER_RESTARTS = 5

# -- dynamic batching (export writes these into each config; the server applies them when a config has none)
DEFAULT_MAX_BATCH_SIZE = 64
# The longest a batch may wait to fill. The adaptive batcher waits only under concurrent traffic, only until
# every recent client has a request in, and only as much as its worker is busy, so the delay is spent where
# batching saves CPU the worker lacks, while a lone client never waits.
DEFAULT_MAX_QUEUE_DELAY_US = 5000
DEFAULT_QUEUE_BATCHES = 16  # the queue bound when a config sets none: this many full batches

# -- clients -------------------------------------------------------------------------------------------
DEFAULT_CLIENT_TIMEOUT_S = 30.0  # seconds per call
DEFAULT_INSIGHT_TIMEOUT_S = 120.0  # filters and explanations of big models take longer


CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def available_cpus(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup v2 CPU quota (containers).

    `os.cpu_count()` is the host's count; in a container limited to 2 CPUs on a 32-core host it would
    start 32 workers.
    """
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max" and int(period) > 0:
            count = min(count, max(1, int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return max(1, count)


@dataclass(frozen=True)
class ServerSettings:
    repo: Path
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    workers: int = 1
    threads: int = 0  # ONNX Runtime intra-op threads per worker; 0 = cores // workers
    device: str = "auto"
    metrics_port: int | None = None  # None = no metrics endpoint; 0 = an ephemeral port
    http_port: int | None = None  # the Open Inference Protocol over HTTP; None = off, 0 = ephemeral
    ui: bool = False  # the model explorer page on the HTTP port
    poll_interval: float = DEFAULT_POLL_INTERVAL  # seconds between repository polls; 0 = never
    max_batch_size: int | None = None  # None = each model's config
    max_queue_delay_us: int | None = None
    max_queue_size: int | None = None
    batching: bool = True
    batch_wait: str = "adaptive"  # or "fixed": every batch waits max_queue_delay to fill
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_images: int = DEFAULT_MAX_IMAGES
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_request_pixels: int = 0  # 0 = max(DEFAULT_MAX_REQUEST_PIXELS, 2 * max_pixels)
    max_decode_pixels: int = 0  # 0 = max(DEFAULT_MAX_DECODE_PIXELS, 2 * request_pixels)
    max_worker_restarts: int = DEFAULT_MAX_WORKER_RESTARTS  # within a minute, per worker
    grace_seconds: float = DEFAULT_GRACE_SECONDS
    # security: TLS (both files), mutual TLS (a client CA), tokens and scopes (a token file)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    auth_tokens: Path | None = None
    reflection: bool = True
    health_port: int | None = None  # a plaintext port serving grpc.health.v1 only (probes under TLS)
    max_streams_per_connection: int = DEFAULT_MAX_STREAMS_PER_CONNECTION
    max_connection_age_s: float = DEFAULT_MAX_CONNECTION_AGE_S
    max_connection_age_grace_s: float = DEFAULT_MAX_CONNECTION_AGE_GRACE_S
    keepalive_time_s: float = DEFAULT_KEEPALIVE_TIME_S
    keepalive_timeout_s: float = DEFAULT_KEEPALIVE_TIMEOUT_S
    min_ping_interval_s: float = DEFAULT_MIN_PING_INTERVAL_S
    max_metadata_bytes: int = DEFAULT_MAX_METADATA_BYTES
    max_in_flight_per_client: int = DEFAULT_MAX_IN_FLIGHT_PER_CLIENT
    echo: bool = False  # serve a no-work Classify: the transport benchmark
    access_log: bool = False  # one log line per call (see observability/calls.py)
    port_file: Path | None = None  # written with the bound port once every worker serves

    @property
    def request_pixels(self) -> int:
        """The pixels one request's images may declare in all."""
        return self.max_request_pixels or max(DEFAULT_MAX_REQUEST_PIXELS, 2 * self.max_pixels)

    @property
    def decode_pixels(self) -> int:
        """The pixels one worker decodes at once, over every request in flight."""
        return self.max_decode_pixels or max(DEFAULT_MAX_DECODE_PIXELS, 2 * self.request_pixels)

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def authenticates(self) -> bool:
        """Whether callers must prove who they are (a token file, or client certificates)."""
        return self.auth_tokens is not None or self.tls_client_ca is not None

    def intra_op_threads(self, cpu_count: int | None = None) -> int:
        if self.threads > 0:
            return self.threads
        cores = cpu_count or available_cpus()
        return max(1, cores // max(1, self.workers))


def _int(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
            raise ValueError(f"must be {bound}")
        return value

    return parse


def _float(minimum: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = float(text)
        if value < minimum:
            raise ValueError(f"must be at least {minimum}")
        return value

    return parse


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false")


def _batch_wait(text: str) -> str:
    if text not in ("adaptive", "fixed"):
        raise ValueError("must be adaptive or fixed")
    return text


def _device(text: str) -> str:
    if text not in ("auto", "cpu", "cuda"):
        raise ValueError("must be auto, cpu or cuda")
    return text


# setting name → (environment variable, parser, command-line flag)
FIELDS: dict[str, tuple[str, Callable[[str], Any], str]] = {
    "repo": ("CNNSERVE_REPO", Path, "--repo"),
    "host": ("CNNSERVE_HOST", str, "--host"),
    "port": ("CNNSERVE_PORT", _int(0, 65535), "--port"),
    "workers": ("CNNSERVE_WORKERS", _int(1), "--workers"),
    "threads": ("CNNSERVE_THREADS", _int(0), "--threads"),
    "device": ("CNNSERVE_DEVICE", _device, "--device"),
    "metrics_port": ("CNNSERVE_METRICS_PORT", _int(0, 65535), "--metrics-port"),
    "http_port": ("CNNSERVE_HTTP_PORT", _int(0, 65535), "--http-port"),
    "ui": ("CNNSERVE_UI", _bool, "--ui"),
    "poll_interval": ("CNNSERVE_POLL_INTERVAL", _float(0.0), "--poll-interval"),
    "max_batch_size": ("CNNSERVE_MAX_BATCH_SIZE", _int(1), "--max-batch-size"),
    "max_queue_delay_us": ("CNNSERVE_MAX_QUEUE_DELAY_US", _int(0), "--max-queue-delay-us"),
    "max_queue_size": ("CNNSERVE_MAX_QUEUE_SIZE", _int(1), "--max-queue-size"),
    "batching": ("CNNSERVE_BATCHING", _bool, "--batching"),
    "batch_wait": ("CNNSERVE_BATCH_WAIT", _batch_wait, "--batch-wait"),
    "max_message_bytes": ("CNNSERVE_MAX_MESSAGE_BYTES", _int(1024), "--max-message-bytes"),
    "max_images": ("CNNSERVE_MAX_IMAGES", _int(1), "--max-images"),
    "max_pixels": ("CNNSERVE_MAX_PIXELS", _int(1), "--max-pixels"),
    "max_request_pixels": ("CNNSERVE_MAX_REQUEST_PIXELS", _int(0), "--max-request-pixels"),
    "max_decode_pixels": ("CNNSERVE_MAX_DECODE_PIXELS", _int(0), "--max-decode-pixels"),
    "max_worker_restarts": ("CNNSERVE_MAX_WORKER_RESTARTS", _int(0), "--max-worker-restarts"),
    "grace_seconds": ("CNNSERVE_GRACE_SECONDS", _float(0.0), "--grace-seconds"),
    "access_log": ("CNNSERVE_ACCESS_LOG", _bool, "--access-log"),
    "tls_cert": ("CNNSERVE_TLS_CERT", Path, "--tls-cert"),
    "tls_key": ("CNNSERVE_TLS_KEY", Path, "--tls-key"),
    "tls_client_ca": ("CNNSERVE_TLS_CLIENT_CA", Path, "--tls-client-ca"),
    "auth_tokens": ("CNNSERVE_AUTH_TOKENS", Path, "--auth-tokens"),
    "reflection": ("CNNSERVE_REFLECTION", _bool, "--reflection"),
    "health_port": ("CNNSERVE_HEALTH_PORT", _int(0, 65535), "--health-port"),
    "max_streams_per_connection": (
        "CNNSERVE_MAX_STREAMS_PER_CONNECTION",
        _int(1),
        "--max-streams-per-connection",
    ),
    "max_connection_age_s": ("CNNSERVE_MAX_CONNECTION_AGE", _float(1.0), "--max-connection-age"),
    "max_connection_age_grace_s": (
        "CNNSERVE_MAX_CONNECTION_AGE_GRACE",
        _float(0.0),
        "--max-connection-age-grace",
    ),
    "keepalive_time_s": ("CNNSERVE_KEEPALIVE_TIME", _float(1.0), "--keepalive-time"),
    "keepalive_timeout_s": ("CNNSERVE_KEEPALIVE_TIMEOUT", _float(1.0), "--keepalive-timeout"),
    "min_ping_interval_s": ("CNNSERVE_MIN_PING_INTERVAL", _float(0.0), "--min-ping-interval"),
    "max_metadata_bytes": ("CNNSERVE_MAX_METADATA_BYTES", _int(1024), "--max-metadata-bytes"),
    "max_in_flight_per_client": ("CNNSERVE_MAX_IN_FLIGHT_PER_CLIENT", _int(0), "--max-in-flight-per-client"),
}


def resolve(
    flags: Mapping[str, Any], environ: Mapping[str, str] | None = None, cpu_count: int | None = None
) -> ServerSettings:
    """Settings from flags (None = not given), then CNNSERVE_* variables, then defaults.

    Flags are validated here too (with the flag's name in the message); a variable's bad value names the
    variable.
    """
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for name, (variable, parse, flag) in FIELDS.items():
        given = flags.get(name)
        if given is not None:
            source, text = flag, str(given)
        elif environ.get(variable, "") != "":
            source, text = variable, environ[variable]
        else:
            continue
        try:
            values[name] = parse(text)
        except ValueError as error:
            reason = str(error) if "must" in str(error) else "is not a valid value"
            raise SettingsError(f"{source}={text!r} {reason}") from None
    if "repo" not in values:
        raise SettingsError("no model repository: pass --repo REPO or set CNNSERVE_REPO")
    if "workers" not in values:
        values["workers"] = cpu_count or available_cpus()
    if values.get("ui") and "http_port" not in values:
        raise SettingsError(
            "--ui needs --http-port: the model explorer is served on the HTTP port, never on the gRPC port"
        )
    for name in ("echo", "port_file"):
        if flags.get(name) is not None:
            values[name] = flags[name]
    _check_tls(values)
    return ServerSettings(**values)


def _check_tls(values: Mapping[str, Any]) -> None:
    if ("tls_cert" in values) != ("tls_key" in values):
        raise SettingsError(
            "TLS needs both the certificate and its key: give --tls-cert and --tls-key "
            "(CNNSERVE_TLS_CERT, CNNSERVE_TLS_KEY)"
        )
    if "tls_client_ca" in values and "tls_cert" not in values:
        raise SettingsError(
            "--tls-client-ca (mutual TLS) needs TLS itself: give --tls-cert and --tls-key too"
        )
