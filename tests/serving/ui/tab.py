"""One tab of the explorer under test: opening it, dropping and pasting files, reading what it shows."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

READY = "() => document.body.dataset.state === 'ready'"

# Image files as the page receives them from a drop or a paste: a DataTransfer holding File objects.
TRANSFER = """(files) => {
    const transfer = new DataTransfer();
    for (const [name, data] of files) {
        const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
        transfer.items.add(new File([bytes], name, { type: "image/png" }));
    }
    return transfer;
}"""

DROP = """(transfer) => {
    const zone = document.querySelector("#dropzone");
    for (const type of ["dragenter", "dragover", "drop"]) {
        const init = { bubbles: true, cancelable: true, dataTransfer: transfer };
        zone.dispatchEvent(new DragEvent(type, init));
    }
}"""

PASTE = """(transfer) => {
    const init = { bubbles: true, cancelable: true, clipboardData: transfer };
    document.dispatchEvent(new ClipboardEvent("paste", init));
}"""

ALL_ANSWERED = """([count, sides]) => {
    const cards = document.querySelectorAll("#gallery .card");
    const answered = (card) => card.querySelectorAll(".side[data-top1-label], .side .error").length;
    return cards.length === count && Array.from(cards).every((card) => answered(card) === sides);
}"""

CARDS = """() => Array.from(document.querySelectorAll("#gallery .card")).map((card) => ({
    name: card.dataset.name,
    disagree: card.classList.contains("disagree"),
    sides: Object.fromEntries(Array.from(card.querySelectorAll(".side")).map((side) => [
        side.dataset.side,
        {
            label: side.dataset.top1Label,
            index: Number(side.dataset.top1Index),
            score: Number(side.dataset.top1Score),
            version: Number(side.dataset.version),
        },
    ])),
}))"""


@dataclass
class Tab:
    """One page of the explorer, with what it logged and fetched."""

    page: Any
    origin: str
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def open(self, path: str = "/") -> None:
        self.page.goto(self.origin + path)
        self.page.wait_for_function(READY)

    def foreign_requests(self) -> list[str]:
        """Requests that went anywhere but this server (data: and blob: URLs never leave the tab)."""
        return [url for url in self.requests if not url.startswith((self.origin + "/", "data:", "blob:"))]

    def _transfer(self, files: Sequence[tuple[str, bytes]]) -> Any:
        encoded = [[name, base64.b64encode(data).decode()] for name, data in files]
        return self.page.evaluate_handle(TRANSFER, encoded)

    def drop(self, files: Sequence[tuple[str, bytes]]) -> None:
        """Drop image files on the drop zone, as a file manager's drag and drop does."""
        self.page.evaluate(DROP, self._transfer(files))

    def paste(self, files: Sequence[tuple[str, bytes]]) -> None:
        """Paste image files, as Ctrl+V after copying images does."""
        self.page.evaluate(PASTE, self._transfer(files))

    def cards(self, count: int, sides: int = 1) -> list[dict[str, Any]]:
        """Wait until `count` cards show their answers (`sides` versions each); their names and top-1s."""
        self.page.wait_for_function(ALL_ANSWERED, arg=[count, sides])
        cards: list[dict[str, Any]] = self.page.evaluate(CARDS)
        return cards

    def pictures(self, selector: str) -> list[dict[str, Any]]:
        """The pictures under `selector`: kind, side, layer, data URL and rendered size."""
        result: list[dict[str, Any]] = self.page.eval_on_selector_all(
            f"{selector} img.picture",
            """(images) => images.map((img) => ({
                kind: img.dataset.kind, side: img.dataset.side, layer: img.dataset.layer || "",
                src: img.src, complete: img.complete, width: img.naturalWidth, height: img.naturalHeight,
            }))""",
        )
        return result


def png_size(data_url: str) -> tuple[int, int]:
    """The width and height of a data: URL's PNG, after checking it is a non-empty one."""
    data = png_bytes(data_url)
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 100, "not a non-empty PNG"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def png_bytes(data_url: str) -> bytes:
    prefix = "data:image/png;base64,"
    assert data_url.startswith(prefix), data_url[:40]
    return base64.b64decode(data_url[len(prefix) :])
