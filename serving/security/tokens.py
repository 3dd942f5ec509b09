"""The token file: which clients exist, how each proves who it is, and what each may do.

One client credential per line, `#` starts a comment:

    sha256:<hex SHA-256 of the token>  NAME  SCOPES
    subject:<certificate subject, RFC 4514, e.g. CN=batch,O=Acme>  NAME  SCOPES
    san:<a subject alternative name: DNS name, URI (spiffe://...), e-mail or IP>  NAME  SCOPES

SCOPES is a comma-separated list of `infer`, `explain`, `admin`. The file holds hashes only: a token is
shown once when `cnnserve token add` creates it and never stored. Tokens are 256 random bits, so one
SHA-256 is as strong as a slow password hash would be. A subject may contain spaces: the name and scopes
are the last two fields of a line.

`TokenStore` keeps the parsed file and re-reads it when it changes (Kubernetes replaces a mounted Secret by
swapping a symlink; the store compares the file's identity and modification time), keeping the last good
contents when a new version does not parse.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cnnserve.serving.errors import SettingsError
from cnnserve.serving.security.scopes import parse_scopes

LOG = logging.getLogger(__name__)

TOKEN_PREFIX = "cnns_"
SHA256 = "sha256"
SUBJECT = "subject"
SAN = "san"
KINDS: tuple[str, ...] = (SHA256, SUBJECT, SAN)
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
HEADER = (
    "# cnnserve clients: CREDENTIAL NAME SCOPES, one per line (cnnserve token add/list/revoke).\n"
    "# CREDENTIAL is sha256:<hash of a token>, subject:<certificate subject> or san:<certificate SAN>;\n"
    "# SCOPES is a comma-separated list of infer, explain, admin.\n"
)


class TokenFileError(SettingsError):
    """The token file cannot be read or a line of it is invalid; the message names the file and line."""


@dataclass(frozen=True)
class ClientEntry:
    """One line of the token file: a credential, the client's name, its scopes."""

    kind: str  # sha256, subject or san
    value: str  # hex digest for sha256, else the certificate identity
    name: str
    scopes: frozenset[str]

    def line(self) -> str:
        return f"{self.kind}:{self.value} {self.name} {','.join(sorted(self.scopes))}"


@dataclass(frozen=True)
class Client:
    """An authenticated caller: its name (for metrics, logs and limits) and what it may do."""

    name: str
    scopes: frozenset[str]


def new_token() -> str:
    """A fresh random token (256 bits), recognisable by its prefix for secret scanners."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def validate_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise ValueError(
            f"invalid client name {name!r}: 1-64 letters, digits, '.', '_', '@' or '-', starting with a "
            "letter or digit"
        )
    return name


def parse_line(line: str) -> ClientEntry | None:
    """One line -> its entry (None for a blank or comment line); ValueError says what is wrong."""
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    parts = text.rsplit(None, 2)
    if len(parts) != 3:
        raise ValueError("expected CREDENTIAL NAME SCOPES")
    credential, name, scopes = parts
    kind, _, value = credential.partition(":")
    if kind not in KINDS or not value:
        raise ValueError(f"credential must start with one of {', '.join(k + ':' for k in KINDS)}")
    if kind == SHA256:
        value = value.lower()
        if not re.fullmatch(r"[0-9a-f]{64}", value):
            raise ValueError("sha256: must be followed by 64 hexadecimal digits")
    return ClientEntry(kind, value, validate_name(name), parse_scopes(scopes))


def parse(text: str, source: str = "token file") -> list[ClientEntry]:
    entries: list[ClientEntry] = []
    for number, line in enumerate(text.splitlines(), start=1):
        try:
            entry = parse_line(line)
        except ValueError as error:
            raise TokenFileError(f"{source}, line {number}: {error}") from None
        if entry is not None:
            entries.append(entry)
    return entries


def read_entries(path: Path) -> list[ClientEntry]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise TokenFileError(f"cannot read token file {path}: {error}") from None
    return parse(text, str(path))


def write_entries(path: Path, entries: Sequence[ClientEntry]) -> None:
    """Replace the file atomically (a server re-reading it never sees half a file), mode 0600."""
    body = HEADER + "".join(entry.line() + "\n" for entry in entries)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(body)
    os.replace(tmp, path)


def _append(path: Path, entry: ClientEntry) -> None:
    entries = read_entries(path) if path.exists() else []
    if any(existing.name == entry.name for existing in entries):
        raise TokenFileError(f"{path} already has a client named {entry.name!r} (revoke it first)")
    entries.append(entry)
    write_entries(path, entries)


def add_token(path: Path, name: str, scopes: Iterable[str]) -> str:
    """Create a token for a new client `name`, append its hash to the file; the token (shown once)."""
    scope_set = parse_scopes(",".join(scopes))
    token = new_token()
    _append(path, ClientEntry(SHA256, token_digest(token).hex(), validate_name(name), scope_set))
    return token


def add_certificate(path: Path, name: str, kind: str, identity: str, scopes: Iterable[str]) -> None:
    """Name the client certificate with this subject (kind `subject`) or SAN (kind `san`); its scopes."""
    if kind not in (SUBJECT, SAN):
        raise ValueError(f"a certificate is named by its {SUBJECT} or a {SAN}, not {kind!r}")
    identity = identity.strip()
    if not identity or "\n" in identity:
        raise ValueError(f"the certificate {kind} must be one non-empty line")
    scope_set = parse_scopes(",".join(scopes))
    _append(path, ClientEntry(kind, identity, validate_name(name), scope_set))


def revoke(path: Path, name: str) -> int:
    """Remove every credential of client `name`; how many lines went (0 = no such client)."""
    entries = read_entries(path)
    kept = [entry for entry in entries if entry.name != name]
    if len(kept) != len(entries):
        write_entries(path, kept)
    return len(entries) - len(kept)


@dataclass(frozen=True)
class _Table:
    digests: tuple[tuple[bytes, Client], ...]
    identities: dict[tuple[str, str], Client]


def _table(entries: Sequence[ClientEntry]) -> _Table:
    digests = tuple((bytes.fromhex(e.value), Client(e.name, e.scopes)) for e in entries if e.kind == SHA256)
    identities = {(e.kind, e.value): Client(e.name, e.scopes) for e in entries if e.kind != SHA256}
    return _Table(digests, identities)


_NO_STAMP = (-1, -1, -1, -1)  # matches no file, and no missing file either


def _file_stamp(path: Path) -> tuple[int, int, int, int] | None:
    try:
        stat = path.stat()  # follows the symlinks of a mounted Secret
    except OSError:
        return None
    return (stat.st_dev, stat.st_ino, stat.st_mtime_ns, stat.st_size)


class TokenStore:
    """The clients of a token file, re-read when the file changes (checked at most every interval)."""

    def __init__(self, path: Path, check_interval: float = 1.0) -> None:
        self.path = path
        self.check_interval = check_interval
        self._lock = threading.Lock()
        self._stamp = _file_stamp(path)
        self._table = _table(read_entries(path))  # a bad file at start-up is an error, not a warning
        self._next_check = time.monotonic() + check_interval
        self._failed_stamp: tuple[int, int, int, int] | None = _NO_STAMP

    @property
    def client_count(self) -> int:
        table = self._table
        return len(table.digests) + len(table.identities)

    def refresh(self, now: float | None = None) -> None:
        """Re-read the file if it changed since the last look (and the interval has passed)."""
        now = time.monotonic() if now is None else now
        if now < self._next_check:
            return
        with self._lock:
            if now < self._next_check:
                return
            self._next_check = now + self.check_interval
            stamp = _file_stamp(self.path)
            if stamp == self._stamp or stamp == self._failed_stamp:
                return
            self._failed_stamp = stamp  # until it parses: one message per version of the file
            if stamp is None:
                LOG.warning("token file %s is missing; keeping the clients read before", self.path)
                return
            try:
                entries = read_entries(self.path)
            except TokenFileError as error:
                LOG.error("%s; keeping the clients read before", error)
                return
            self._table = _table(entries)
            self._stamp = stamp
            self._failed_stamp = _NO_STAMP
            LOG.info("token file %s re-read: %d client credential(s)", self.path, len(entries))

    def authenticate(self, token: str) -> Client | None:
        """The client a bearer token belongs to, or None. Compares against every hash in constant time."""
        self.refresh()
        digest = token_digest(token)
        found: Client | None = None
        for known, client in self._table.digests:
            if hmac.compare_digest(known, digest):
                found = client
        return found

    def identify(self, subject: str | None, sans: Iterable[str]) -> Client | None:
        """The client a verified certificate belongs to (its subject or one of its SANs), or None."""
        self.refresh()
        identities = self._table.identities
        if not identities:
            return None
        if subject is not None:
            client = identities.get((SUBJECT, subject))
            if client is not None:
                return client
        for san in sans:
            client = identities.get((SAN, san))
            if client is not None:
                return client
        return None
