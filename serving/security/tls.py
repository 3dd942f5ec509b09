"""The server's TLS material, read from PEM files and re-read when they change (certificate rotation).

`TlsWatcher.current()` is called once per new connection (each TLS handshake): it looks at the files'
identity and modification time (a few microseconds) and, when they changed, reads and checks them again.
New connections then get the new certificate while existing connections, and the calls on them, go on
with the one they negotiated. A half-written pair (the certificate renewed but not yet its key) fails the
check and the previous material stays in use until the pair is whole again.

`grpc/credentials.py` hands the watcher to gRPC as dynamic credentials (gRPC asks before every
handshake); `server_ssl_context` gives an `ssl.SSLContext` for HTTP servers that does the same through its
SNI callback (called for every handshake, with or without a server name).
"""

from __future__ import annotations

import logging
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

from cnnserve.serving.errors import SettingsError
from cnnserve.serving.settings import ServerSettings

LOG = logging.getLogger(__name__)


class TlsConfigError(SettingsError):
    """A certificate, key or CA file is missing, unreadable or does not fit; the message names it."""


@dataclass(frozen=True)
class TlsFiles:
    """Where the server's certificate chain, its private key and (for mutual TLS) the client CA live."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    @property
    def paths(self) -> tuple[Path, ...]:
        return (self.cert, self.key) if self.client_ca is None else (self.cert, self.key, self.client_ca)


def tls_files(settings: ServerSettings) -> TlsFiles:
    """The TLS files a server's settings name (the settings check that certificate and key go together)."""
    if settings.tls_cert is None or settings.tls_key is None:
        raise TlsConfigError("TLS needs both --tls-cert and --tls-key")
    return TlsFiles(settings.tls_cert, settings.tls_key, settings.tls_client_ca)


@dataclass(frozen=True)
class TlsMaterial:
    """One consistent reading of the files: PEM bytes, checked to fit together."""

    cert_chain: bytes
    key: bytes
    client_ca: bytes | None

    @property
    def mutual(self) -> bool:
        return self.client_ca is not None


Stamp = tuple[tuple[int, int, int, int] | None, ...]


def _stamp(paths: tuple[Path, ...]) -> Stamp:
    stamps: list[tuple[int, int, int, int] | None] = []
    for path in paths:
        try:
            stat = path.stat()  # follows the symlinks of a mounted Secret
        except OSError:
            stamps.append(None)
            continue
        stamps.append((stat.st_dev, stat.st_ino, stat.st_mtime_ns, stat.st_size))
    return tuple(stamps)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise TlsConfigError(f"cannot read the TLS {what} {path}: {error.strerror or error}") from None


def load_material(files: TlsFiles) -> TlsMaterial:
    """Read the files and check them with OpenSSL: the key matches the certificate, the CA parses."""
    cert = _read(files.cert, "certificate")
    key = _read(files.key, "private key")
    client_ca = None if files.client_ca is None else _read(files.client_ca, "client CA")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(files.cert, files.key)
    except ssl.SSLError as error:
        raise TlsConfigError(
            f"the TLS certificate {files.cert} and key {files.key} do not form a valid pair "
            f"({error.reason or error})"
        ) from None
    except OSError as error:
        raise TlsConfigError(f"cannot read the TLS certificate or key: {error}") from None
    if client_ca is not None:
        try:
            context.load_verify_locations(cadata=client_ca.decode("ascii"))
        except (ssl.SSLError, UnicodeDecodeError, ValueError) as error:
            raise TlsConfigError(
                f"the client CA {files.client_ca} holds no valid PEM certificate ({error})"
            ) from None
    material = TlsMaterial(cert, key, client_ca)
    # OpenSSL read the files by path: make sure they are still the bytes we read (no change in between).
    again = load_unchecked(files)
    if again != material:
        raise TlsConfigError(f"the TLS files changed while being read ({', '.join(map(str, files.paths))})")
    return material


def load_unchecked(files: TlsFiles) -> TlsMaterial:
    return TlsMaterial(
        _read(files.cert, "certificate"),
        _read(files.key, "private key"),
        None if files.client_ca is None else _read(files.client_ca, "client CA"),
    )


class TlsWatcher:
    """The newest valid TLS material of `files`; the first reading must succeed, later failures are logged.

    Several consumers (the gRPC port, an HTTP port) may share one watcher: each remembers the generation
    it last took, so whichever looks first does not hide a change from the others.
    """

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self._lock = threading.Lock()
        self._stamp = _stamp(files.paths)
        self._current: tuple[int, TlsMaterial] = (0, load_material(files))
        self._failed: Stamp | None = None

    def current(self) -> tuple[int, TlsMaterial]:
        """(generation, material): the files are looked at again, and re-read if they changed."""
        stamp = _stamp(self.files.paths)
        if stamp == self._stamp or stamp == self._failed:
            return self._current
        with self._lock:
            if stamp == self._stamp:
                return self._current
            try:
                material = load_material(self.files)
            except TlsConfigError as error:
                if stamp != self._failed:
                    LOG.warning("%s; new connections keep the previous certificate", error)
                self._failed = stamp
                return self._current
            self._stamp = stamp
            self._failed = None
            generation, previous = self._current
            if material != previous:
                self._current = (generation + 1, material)
                LOG.info("TLS material reloaded from %s", ", ".join(map(str, self.files.paths)))
            return self._current


def server_ssl_context(watcher: TlsWatcher) -> ssl.SSLContext:
    """An SSLContext for an HTTP server that switches to the newest material at every handshake."""
    contexts: dict[int, ssl.SSLContext] = {}

    def build(material: TlsMaterial) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        files = watcher.files
        context.load_cert_chain(files.cert, files.key)
        if material.client_ca is not None:
            context.load_verify_locations(cadata=material.client_ca.decode("ascii"))
            context.verify_mode = ssl.CERT_REQUIRED
        context.sni_callback = pick
        return context

    def pick(connection: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: ssl.SSLContext) -> None:
        generation, material = watcher.current()
        context = contexts.get(generation)
        if context is None:
            try:
                context = build(material)
            except (ssl.SSLError, OSError) as error:
                LOG.warning("cannot load the renewed TLS files (%s); keeping the previous ones", error)
                return None
            contexts.clear()
            contexts[generation] = context
        connection.context = context
        return None

    generation, material = watcher.current()
    contexts[generation] = first = build(material)
    return first


_SHORT_NAMES = {
    "commonName": "CN",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "localityName": "L",
    "stateOrProvinceName": "ST",
    "streetAddress": "STREET",
    "domainComponent": "DC",
    "userId": "UID",
}


def _escape(value: str) -> str:
    """RFC 4514 escaping of an attribute value."""
    escaped = "".join(f"\\{c}" if c in ',+"\\<>;=' else c for c in value)
    if escaped.startswith((" ", "#")):
        escaped = "\\" + escaped
    if escaped.endswith(" ") and not escaped.endswith("\\ "):
        escaped = escaped[:-1] + "\\ "
    return escaped


def auth_context(peer_certificate: dict[str, object] | None) -> dict[str, list[bytes]]:
    """The verified client certificate of an `ssl` connection (`getpeercert()`), the way gRPC's
    `auth_context()` reports it: `x509_subject` in RFC 4514 (most specific first, as gRPC prints it) and
    `x509_subject_alternative_name` values. What an HTTP transport hands the call hooks under mutual TLS."""
    if not peer_certificate:
        return {}
    subject = peer_certificate.get("subject") or ()
    parts = []
    for rdn in reversed(list(subject)):  # type: ignore[call-overload]
        parts.append("+".join(f"{_SHORT_NAMES.get(name, name)}={_escape(value)}" for name, value in rdn))
    sans = [value for _, value in peer_certificate.get("subjectAltName") or ()]  # type: ignore[attr-defined]
    context: dict[str, list[bytes]] = {"x509_subject_alternative_name": [san.encode() for san in sans]}
    if parts:
        context["x509_subject"] = [",".join(parts).encode()]
    return context
