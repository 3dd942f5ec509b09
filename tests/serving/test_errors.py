"""The error tree: every serving error type, the status its caller gets, and what never reaches a caller."""

from __future__ import annotations

import asyncio
import importlib
import pkgutil
from pathlib import Path

import grpc
import pytest
from status_table import CODES, EXPECTED, make

import cnnserve.serving
from cnnserve.serving import errors
from cnnserve.serving.errors import INTERNAL_MESSAGE, ServingError, Status, status_of
from cnnserve.serving.grpc.client import ServerError


def _every_error_type() -> set[type[ServingError]]:
    """Every ServingError subclass defined anywhere in serving (each module imported, optional extras bar)."""
    for module in pkgutil.walk_packages(cnnserve.serving.__path__, "cnnserve.serving."):
        try:
            importlib.import_module(module.name)
        except ImportError:  # an optional extra (Ray) that is not installed
            continue
    found: set[type[ServingError]] = set()
    pending = [ServingError]
    while pending:
        cls = pending.pop()
        found.add(cls)
        pending.extend(cls.__subclasses__())
    return found


def test_every_error_type_has_a_stated_status() -> None:
    # ServerError carries the status the server answered (tested below); every other type has its own.
    assert _every_error_type() - {ServerError} == set(EXPECTED)


@pytest.mark.parametrize(
    "error_type", sorted(EXPECTED, key=lambda cls: cls.__name__), ids=lambda c: c.__name__
)
def test_each_error_type_maps_to_its_status(error_type: type[ServingError]) -> None:
    name = EXPECTED[error_type]
    status, message = status_of(make(error_type, f"{error_type.__name__} names the culprit"))
    assert (status.name, message) == (name, f"{error_type.__name__} names the culprit")
    assert (status.grpc_code, status.http_status) == CODES[name]


def test_status_codes_are_the_protocols_own() -> None:
    assert {status.name: (status.grpc_code, status.http_status) for status in Status} == CODES
    for status in Status:
        assert grpc.StatusCode[status.name].value[0] == status.grpc_code


def test_anything_outside_the_tree_is_internal_with_a_fixed_message() -> None:
    leaky = RuntimeError("failed at /srv/models/mnist/1/model.onnx, object at 0x7f3a2c")
    assert status_of(leaky) == (Status.INTERNAL, INTERNAL_MESSAGE)
    assert "/" not in INTERNAL_MESSAGE and "0x" not in INTERNAL_MESSAGE
    assert status_of(asyncio.CancelledError()) == (Status.CANCELLED, "the call was cancelled")
    assert status_of(KeyError("model")) == (Status.INTERNAL, INTERNAL_MESSAGE)


@pytest.mark.parametrize(
    ("code", "status"),
    [(grpc.StatusCode.NOT_FOUND, Status.NOT_FOUND), (grpc.StatusCode.OK, Status.UNKNOWN)],
)
def test_a_client_side_error_keeps_the_status_the_server_answered(code, status) -> None:
    error = ServerError(code, "no model 'x'")
    assert status_of(error) == (status, f"{code.name}: no model 'x'")
    assert (error.code, error.message) == (code, "no model 'x'")


def test_index_of_an_invalid_image_is_kept() -> None:
    assert errors.InvalidRequestError("image 3: bad", index=3).index == 3
    assert errors.ImageDecodeError("bad").index is None


def test_a_name_a_client_sent_is_quoted_and_cut_saying_how_long_it_was() -> None:
    at_limit = "a" * errors.ECHO_CHARS
    assert errors.shown(at_limit) == repr(at_limit)
    assert errors.shown(at_limit + "b") == f"{at_limit!r}… ({errors.ECHO_CHARS + 1} characters)"
    assert errors.shown("x" * 1500, limit=3) == "'xxx'… (1,500 characters)"
    assert errors.shown("o'k\n", limit=4) == repr("o'k\n")  # quoted as Python would: nothing raw


def test_paths_under_the_repository_are_told_relative_to_it(tmp_path) -> None:
    """Whether the server was given the repository through a symlink or not, a client reads no path of
    the server's: both spellings of the root are cut, and a path outside it is left alone."""
    root = tmp_path / "repository"
    (root / "m").mkdir(parents=True)
    link = tmp_path / "repo-link"
    link.symlink_to(root)
    text = f"cannot read {link}/m/1/model.onnx nor {root}/m/2/config.pbtxt; {tmp_path}/other stays"
    expected = f"cannot read m/1/model.onnx nor m/2/config.pbtxt; {tmp_path}/other stays"
    assert errors.without_root(text, link) == expected
    assert errors.without_root(text, root) == f"cannot read {link}/m/1/model.onnx nor m/2/config.pbtxt; " + (
        f"{tmp_path}/other stays"
    )
    assert errors.without_root(f"no version folder in {root}/m", Path(f"{root}/")) == "no version folder in m"
