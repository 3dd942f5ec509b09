"""Fixtures of the explorer's browser tests: one headless Chromium for the session, a tab per test.

Each tab records what a person would not see but a test must: console errors, uncaught exceptions, and
every request the page makes (to prove nothing leaves the server's origin).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from browser import CHROMIUM_ARGS, find_or_install_chromium
from tab import Tab

VIEWPORT = {"width": 1400, "height": 1000}


@pytest.fixture(scope="session")
def chromium() -> str:
    found = find_or_install_chromium()
    if found.path is None:
        pytest.skip(f"no browser for the explorer tests: {found.reason}")
    return found.path


@pytest.fixture(scope="session")
def browser_context(chromium: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Chromium with a fresh profile folder, driven by Playwright."""
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (the `test` extra has it: make test)"
    )
    playwright = sync_api.sync_playwright().start()
    try:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=chromium,
            headless=True,
            args=list(CHROMIUM_ARGS),
            viewport=VIEWPORT,
        )
    except Exception:
        playwright.stop()
        raise
    yield context
    context.close()
    playwright.stop()


@pytest.fixture
def open_tab(browser_context: Any) -> Iterator[Callable[[int], Tab]]:
    """`open_tab(http_port)`: a new tab on the explorer at 127.0.0.1:port that records errors and requests."""
    tabs: list[Tab] = []

    def open_(port: int) -> Tab:
        page = browser_context.new_page()
        tab = Tab(page, f"http://127.0.0.1:{port}")
        page.on(
            "console",
            lambda message: tab.console_errors.append(message.text) if message.type == "error" else None,
        )
        page.on("pageerror", lambda error: tab.page_errors.append(str(error)))
        page.on("request", lambda request: tab.requests.append(request.url))
        tabs.append(tab)
        return tab

    yield open_
    for tab in tabs:
        tab.page.close()


def _console(tab: Tab, message: Any) -> None:
    if message.type == "error":
        tab.console_errors.append(message.text)
