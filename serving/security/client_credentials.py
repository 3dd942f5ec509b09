"""What a client presents to a secured server: TLS trust, an optional client certificate, a bearer token.

Every client (the CLI commands, the health check, the batch job's remote engine, the Python client) builds
a `ClientSecurity` from the same flags and variables:

    --tls                 use TLS, trusting the system's CAs (implied by any --tls-* flag)
    --tls-ca PEM          trust this CA (CNNSERVE_TLS_CA)
    --tls-cert/--tls-key  the client certificate and key for mutual TLS
    --tls-server-name     the name to check the server's certificate against (default: the address's host)
    --token / --token-file / CNNSERVE_TOKEN / CNNSERVE_TOKEN_FILE   a bearer token

It holds bytes, not paths: read once, checked at once, and never shown by `repr` (key and token).
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cnnserve.serving.errors import SettingsError

LOG = logging.getLogger(__name__)

TOKEN_ENV = "CNNSERVE_TOKEN"
TOKEN_FILE_ENV = "CNNSERVE_TOKEN_FILE"
TLS_CA_ENV = "CNNSERVE_TLS_CA"
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]", "::1")


class ClientSecurityError(SettingsError):
    """A client TLS file or token file is missing, unreadable or incomplete; the message names it."""


@dataclass(frozen=True)
class ClientSecurity:
    tls: bool = False
    ca: bytes | None = None
    cert: bytes | None = None
    key: bytes | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    server_name: str | None = None

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The call metadata that carries the token (empty without one)."""
        return () if self.token is None else (("authorization", f"Bearer {self.token}"),)

    def warn_if_exposed(self, address: str) -> None:
        """A token sent in plaintext to another machine can be read on the way: say so."""
        host = address.rsplit(":", 1)[0].removeprefix("dns:///").removeprefix("ipv4:")
        if self.token is not None and not self.tls and host not in LOOPBACK_HOSTS:
            LOG.warning("sending a bearer token to %s without TLS: anyone on the path can read it", address)


def _read(path: str | Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise ClientSecurityError(f"cannot read the {what} {path}: {error.strerror or error}") from None


def read_token_file(path: str | Path) -> str:
    text = _read(path, "token file").decode("utf-8", errors="replace").strip()
    if not text or len(text.split()) != 1:
        raise ClientSecurityError(f"the token file {path} must hold exactly one token")
    return text


def client_security(
    tls: bool = False,
    tls_ca: str | Path | None = None,
    tls_cert: str | Path | None = None,
    tls_key: str | Path | None = None,
    tls_server_name: str | None = None,
    token: str | None = None,
    token_file: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> ClientSecurity:
    """Flags first, then CNNSERVE_TLS_CA / CNNSERVE_TOKEN / CNNSERVE_TOKEN_FILE."""
    environ = os.environ if environ is None else environ
    tls_ca = tls_ca or environ.get(TLS_CA_ENV) or None
    if (tls_cert is None) != (tls_key is None):
        raise ClientSecurityError("--tls-cert and --tls-key go together (the client certificate and its key)")
    if token is None and token_file is None:
        token = environ.get(TOKEN_ENV) or None
        token_file = environ.get(TOKEN_FILE_ENV) or None if token is None else None
    if token is None and token_file is not None:
        token = read_token_file(token_file)
    uses_tls = tls or any(v is not None for v in (tls_ca, tls_cert, tls_server_name))
    return ClientSecurity(
        tls=uses_tls,
        ca=None if tls_ca is None else _read(tls_ca, "CA certificate"),
        cert=None if tls_cert is None else _read(tls_cert, "client certificate"),
        key=None if tls_key is None else _read(tls_key, "client key"),
        token=token,
        server_name=tls_server_name,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The client security flags, in their own group of --help."""
    group = parser.add_argument_group("security (a server with TLS or tokens)")
    group.add_argument("--tls", action="store_true", help="use TLS, trusting the system's CAs")
    group.add_argument(
        "--tls-ca", type=Path, metavar="PEM", help=f"trust this CA (or ${TLS_CA_ENV}); implies --tls"
    )
    group.add_argument("--tls-cert", type=Path, metavar="PEM", help="client certificate, for mutual TLS")
    group.add_argument("--tls-key", type=Path, metavar="PEM", help="the client certificate's private key")
    group.add_argument(
        "--tls-server-name", metavar="NAME", help="check the server's certificate against NAME, not the host"
    )
    tokens = group.add_mutually_exclusive_group()
    tokens.add_argument(
        "--token",
        metavar="TOKEN",
        help=f"bearer token (prefer ${TOKEN_ENV} or --token-file: argv is visible)",
    )
    tokens.add_argument(
        "--token-file",
        type=Path,
        metavar="FILE",
        help=f"read the bearer token from FILE (or ${TOKEN_FILE_ENV})",
    )


def from_args(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> ClientSecurity:
    return client_security(
        tls=args.tls,
        tls_ca=args.tls_ca,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_server_name=args.tls_server_name,
        token=args.token,
        token_file=args.token_file,
        environ=environ,
    )
