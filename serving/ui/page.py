"""The model explorer's files, served by the server itself: `GET /` and `/models/{m}[/versions/{v}]` answer
the page, `GET /ui/{file}` its script, style sheet and icon.

The files are hand-written HTML, CSS and JavaScript modules shipped inside the package (`static/`): no
build step, no CDN, nothing fetched from anywhere but this server, so the page works with no internet.
Every answer carries a Content-Security-Policy that lets the page load its own files and talk to its own
origin only (`connect-src 'self'`), with pictures as data: and blob: URLs. The files themselves need no
token: they hold no data, and the page asks for a token when the API answers 401. The page reads the
server through the JSON API (`serving/http/json_api.py`) and the Open Inference Protocol's `infer`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources

from cnnserve.serving.http.server import HttpRequest, HttpResponse, PathNotFoundError, Router

PAGE = "index.html"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
HEADERS: tuple[tuple[str, str], ...] = (
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-cache"),
)
PAGE_PATHS = ("/", "/models/{model}", "/models/{model}/versions/{version}")


@dataclass(frozen=True)
class Asset:
    name: str
    content_type: str
    body: bytes


def load_assets() -> dict[str, Asset]:
    """Every file of `static/`, read once from the installed package."""
    folder = resources.files("cnnserve.serving.ui").joinpath("static")
    assets = {}
    for entry in folder.iterdir():
        suffix = entry.name[entry.name.rfind(".") :]
        if entry.is_file() and suffix in CONTENT_TYPES:
            assets[entry.name] = Asset(entry.name, CONTENT_TYPES[suffix], entry.read_bytes())
    if PAGE not in assets:
        raise FileNotFoundError(f"the explorer's {PAGE} is missing from the installed package")
    return assets


class ExplorerPage:
    """The page and its files as routes of the HTTP server."""

    def __init__(self) -> None:
        self.assets = load_assets()

    def add_routes(self, router: Router) -> None:
        for path in PAGE_PATHS:
            router.add("GET", path, self.page)
        router.add("GET", "/ui/{name}", self.file)

    async def page(self, request: HttpRequest, params: Mapping[str, str]) -> HttpResponse:
        return self._answer(self.assets[PAGE])

    async def file(self, request: HttpRequest, params: Mapping[str, str]) -> HttpResponse:
        asset = self.assets.get(params["name"])
        if asset is None or asset.name == PAGE:
            raise PathNotFoundError(f"no explorer file {params['name']!r}")
        return self._answer(asset)

    @staticmethod
    def _answer(asset: Asset) -> HttpResponse:
        return HttpResponse(200, asset.body, content_type=asset.content_type, headers=HEADERS)
