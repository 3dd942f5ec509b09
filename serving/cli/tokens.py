"""`cnnserve token add|list|revoke`: manage the token file, so nobody writes hashes by hand.

`add NAME --scopes infer,explain` creates a random token, appends its SHA-256 to the file and prints the
token once, on stdout (nothing else goes there, so `TOKEN=$(cnnserve token add ...)` works); with
`--subject` or `--san` it names a client certificate instead and prints nothing. The file is replaced
atomically, so a running server re-reads a whole file. Standard library only.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

TOKENS_ENV = "CNNSERVE_AUTH_TOKENS"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "token",
        help="add, list or revoke the clients of a token file (--auth-tokens)",
        description="Manage the clients of the token file a server reads with --auth-tokens: bearer "
        "tokens (stored as SHA-256 hashes) and client-certificate identities, each with its scopes "
        "(infer, explain, admin).",
    )
    actions = parser.add_subparsers(dest="token_command", metavar="ACTION", required=True)

    def file_option(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--file",
            type=Path,
            default=os.environ.get(TOKENS_ENV) or None,
            help=f"the token file (default ${TOKENS_ENV})",
        )

    add = actions.add_parser(
        "add",
        help="create a token for a new client (printed once) or name a client certificate",
        description="Create a random token for client NAME, store its hash and print the token once; "
        "or, with --subject/--san, give the client certificate with that subject or SAN the scopes.",
    )
    add.add_argument("name", metavar="NAME", help="the client's name (shown in metrics and logs)")
    add.add_argument("--scopes", required=True, help="comma-separated: infer, explain, admin")
    identity = add.add_mutually_exclusive_group()
    identity.add_argument("--subject", help="a client certificate's subject, RFC 4514 (e.g. CN=batch,O=Acme)")
    identity.add_argument("--san", help="a client certificate's subject alternative name (DNS, URI, e-mail)")
    file_option(add)
    add.set_defaults(handler=run_add)

    listing = actions.add_parser("list", help="the clients in the token file (no secrets)")
    file_option(listing)
    listing.set_defaults(handler=run_list)

    revoke = actions.add_parser("revoke", help="remove every credential of a client")
    revoke.add_argument("name", metavar="NAME")
    file_option(revoke)
    revoke.set_defaults(handler=run_revoke)


def _file(args: argparse.Namespace) -> Path | None:
    if args.file is None:
        print(f"error: no token file: pass --file TOKENS or set {TOKENS_ENV}", file=sys.stderr)
    return args.file


def run_add(args: argparse.Namespace) -> int:
    from cnnserve.serving.errors import ServingError
    from cnnserve.serving.security import tokens

    path = _file(args)
    if path is None:
        return 2
    scopes = args.scopes.split(",")
    try:
        if args.subject is not None or args.san is not None:
            kind, identity = (
                (tokens.SUBJECT, args.subject) if args.subject is not None else (tokens.SAN, args.san)
            )
            tokens.add_certificate(path, args.name, kind, identity, scopes)
            print(
                f"client {args.name!r}: certificate {kind} {identity!r} may use {args.scopes}",
                file=sys.stderr,
            )
            return 0
        token = tokens.add_token(path, args.name, scopes)
    except (ServingError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(token)
    print(
        f"client {args.name!r} added to {path} with scopes {args.scopes}; the token above is shown only "
        "once: store it now (e.g. in a Secret, then CNNSERVE_TOKEN or --token-file)",
        file=sys.stderr,
    )
    return 0


def run_list(args: argparse.Namespace) -> int:
    from cnnserve.serving.security import tokens

    path = _file(args)
    if path is None:
        return 2
    try:
        entries = tokens.read_entries(path)
    except tokens.TokenFileError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    rows = [("NAME", "SCOPES", "CREDENTIAL")]
    for entry in entries:
        credential = (
            f"token sha256:{entry.value[:12]}…"
            if entry.kind == tokens.SHA256
            else f"{entry.kind}:{entry.value}"
        )
        rows.append((entry.name, ",".join(sorted(entry.scopes)), credential))
    width = [max(len(row[i]) for row in rows) for i in range(2)]
    for name, scopes, credential in rows:
        print(f"{name:<{width[0]}}  {scopes:<{width[1]}}  {credential}")
    return 0


def run_revoke(args: argparse.Namespace) -> int:
    from cnnserve.serving.security import tokens

    path = _file(args)
    if path is None:
        return 2
    try:
        removed = tokens.revoke(path, args.name)
    except tokens.TokenFileError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if removed == 0:
        print(f"error: {path} has no client named {args.name!r}", file=sys.stderr)
        return 1
    print(
        f"revoked client {args.name!r} ({removed} credential(s)); servers re-read {path} within a second",
        file=sys.stderr,
    )
    return 0
