"""The token file: format, `add`/`revoke`, hashing, constant-time lookup, re-reading when it changes."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path

import pytest

from cnnserve.serving.security import tokens
from cnnserve.serving.security.tokens import TokenFileError, TokenStore


def test_add_stores_only_the_hash_and_returns_the_token_once(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    token = tokens.add_token(path, "batch-job", ["infer"])
    text = path.read_text()
    assert token.startswith(tokens.TOKEN_PREFIX) and len(token) > 40
    assert token not in text
    assert f"sha256:{hashlib.sha256(token.encode()).hexdigest()} batch-job infer" in text
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert TokenStore(path).authenticate(token) == tokens.Client("batch-job", frozenset({"infer"}))


def test_add_refuses_a_duplicate_name_and_unknown_scopes(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    tokens.add_token(path, "ui", ["infer", "explain"])
    with pytest.raises(TokenFileError, match="already has a client named 'ui'"):
        tokens.add_token(path, "ui", ["infer"])
    with pytest.raises(ValueError, match="unknown scope 'root'"):
        tokens.add_token(path, "other", ["root"])
    with pytest.raises(ValueError, match="invalid client name"):
        tokens.add_token(path, "has space", ["infer"])


def test_revoke_removes_every_credential_of_the_client(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    kept = tokens.add_token(path, "keep", ["infer"])
    gone = tokens.add_token(path, "gone", ["infer"])
    with path.open("a") as handle:
        handle.write("san:spiffe://acme/gone gone infer\n")
    assert tokens.revoke(path, "gone") == 2
    assert tokens.revoke(path, "nobody") == 0
    store = TokenStore(path)
    assert store.authenticate(gone) is None
    assert store.authenticate(kept) is not None


def test_certificate_identities_with_spaces_parse(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(
        "# comment\n\nsubject:CN=batch job,O=Acme  batch  infer,explain\nsan:spiffe://acme/ops ops admin\n"
    )
    store = TokenStore(path)
    assert store.identify("CN=batch job,O=Acme", ()) == tokens.Client(
        "batch", frozenset({"infer", "explain"})
    )
    assert store.identify("CN=other", ["dns.example", "spiffe://acme/ops"]) == tokens.Client(
        "ops", frozenset({"admin"})
    )
    assert store.identify("CN=other", ["x"]) is None
    assert store.authenticate("cnns_anything") is None


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("sha256:abc ui infer", "64 hexadecimal digits"),
        ("md5:" + "0" * 64 + " ui infer", "credential must start with"),
        ("sha256:" + "0" * 64 + " ui", "expected CREDENTIAL NAME SCOPES"),
        ("sha256:" + "0" * 64 + " ui infer,write", "unknown scope 'write'"),
    ],
)
def test_a_bad_line_is_named(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "tokens"
    path.write_text("# header\n" + line + "\n")
    with pytest.raises(TokenFileError, match=rf"tokens, line 2: .*{message}"):
        TokenStore(path)


def test_the_file_is_re_read_when_it_changes_and_a_bad_version_is_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "tokens"
    first = tokens.add_token(path, "first", ["infer"])
    store = TokenStore(path, check_interval=0.0)
    assert store.authenticate(first) is not None
    second = tokens.add_token(path, "second", ["explain"])
    assert store.authenticate(second) == tokens.Client("second", frozenset({"explain"}))
    tokens.revoke(path, "first")
    assert store.authenticate(first) is None

    with caplog.at_level(logging.ERROR):
        path.write_text("garbage line that does not parse at all\n")
        for _ in range(3):
            assert store.authenticate(second) is not None  # the last good file stays in force
    errors = [r for r in caplog.records if "line 1" in r.getMessage()]
    assert len(errors) == 1  # once per version of the file, not per call


def test_the_check_interval_limits_how_often_the_file_is_looked_at(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    tokens.add_token(path, "first", ["infer"])
    store = TokenStore(path, check_interval=3600.0)
    late = tokens.add_token(path, "late", ["infer"])
    assert store.authenticate(late) is None
    store.refresh(now=time.monotonic() + 3600.0)
    assert store.authenticate(late) is not None


def test_a_kubernetes_style_symlink_swap_is_noticed(tmp_path: Path) -> None:
    """A mounted Secret is `tokens -> ..data/tokens`, and `..data` is a symlink swapped atomically."""
    one, two = tmp_path / "..2024_1", tmp_path / "..2024_2"
    one.mkdir()
    two.mkdir()
    old = tokens.add_token(one / "tokens", "old", ["infer"])
    new = tokens.add_token(two / "tokens", "new", ["infer"])
    os.symlink(one.name, tmp_path / "..data")
    os.symlink("..data/tokens", tmp_path / "tokens")
    store = TokenStore(tmp_path / "tokens", check_interval=0.0)
    assert store.authenticate(old) is not None
    os.symlink(two.name, tmp_path / "..data_tmp")
    os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
    assert store.authenticate(new) is not None
    assert store.authenticate(old) is None


def test_certificate_identities_are_added_by_command_not_by_hand(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    tokens.add_certificate(path, "batch", "subject", "CN=batch job,O=Acme", ["infer"])
    tokens.add_certificate(path, "mesh", "san", "spiffe://acme/ns/default/sa/ui", ["infer", "explain"])
    with pytest.raises(TokenFileError, match="already has a client named 'batch'"):
        tokens.add_certificate(path, "batch", "san", "other", ["infer"])
    store = TokenStore(path)
    assert store.identify("CN=batch job,O=Acme", ()) == tokens.Client("batch", frozenset({"infer"}))
    assert store.identify(None, ["spiffe://acme/ns/default/sa/ui"]) is not None
