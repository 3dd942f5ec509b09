"""A real browser for the explorer's tests: Debian's Chromium, driven by Playwright, kept off the network.

Chromium comes from the system (`chromium` on PATH, or CNNSERVE_CHROMIUM naming an executable); on a Debian
machine without it, where this process may install packages (root), Debian's `chromium` package is
installed with apt-get once -- that is how `make test` gets it on a clean CI machine, whose only network is
the package registries. Playwright comes from PyPI (the `test` extra) and drives that executable: nothing
downloads a browser build of its own (`playwright install` is never run). Only when neither is possible are
the browser tests skipped, with the reason.

The browser is kept off the network whatever the page does: background services are off, and every request
not to a loopback address goes to a proxy on 127.0.0.1:9 that nothing listens on, so it fails at once on
this machine (loopback requests bypass proxies); the tests also record every request the page makes.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from dataclasses import dataclass

LOG = logging.getLogger(__name__)

CHROMIUM_NAMES = ("chromium", "chromium-browser")
DEBIAN_PACKAGE = "chromium"
INSTALL_TIMEOUT_S = 900
# Chromium's flags: headless, no GPU, no sandbox (root in a container), nothing that phones home, and a
# dead proxy for anything that is not loopback. Playwright adds a fresh --user-data-dir of its own.
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--proxy-server=http://127.0.0.1:9",
)


@dataclass(frozen=True)
class Found:
    path: str | None
    reason: str = ""  # why there is none


def _on_path() -> str | None:
    configured = os.environ.get("CNNSERVE_CHROMIUM")
    if configured:
        return configured
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def _apt(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    command = ["apt-get", "-o", "DPkg::Lock::Timeout=600", "-q", "-y", *args]
    return subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, check=False
    )


def _tail(result: subprocess.CompletedProcess[str]) -> str:
    lines = (result.stderr or result.stdout).strip().splitlines()
    return " / ".join(lines[-3:])


def find_or_install_chromium() -> Found:
    """The Chromium executable to drive, installing Debian's package when there is none and we may."""
    path = _on_path()
    if path:
        configured = os.environ.get("CNNSERVE_CHROMIUM")
        if configured and not os.access(configured, os.X_OK):
            return Found(None, f"CNNSERVE_CHROMIUM={configured} is not an executable")
        return Found(path)
    if shutil.which("apt-get") is None:
        return Found(None, "no chromium on PATH, and no apt-get to install Debian's chromium package")
    if os.geteuid() != 0:
        return Found(
            None,
            "no chromium on PATH; installing Debian's chromium package needs root "
            "(apt-get install chromium, or set CNNSERVE_CHROMIUM to a Chromium executable)",
        )
    LOG.warning("installing Debian's %s package for the browser tests (once per machine)", DEBIAN_PACKAGE)
    installed = _apt("install", "--no-install-recommends", DEBIAN_PACKAGE)
    if installed.returncode != 0:  # the package lists may be missing or stale: read them, then retry
        updated = _apt("update")
        if updated.returncode != 0:
            return Found(None, f"apt-get update failed, so chromium cannot be installed: {_tail(updated)}")
        installed = _apt("install", "--no-install-recommends", DEBIAN_PACKAGE)
    if installed.returncode != 0:
        return Found(None, f"apt-get install {DEBIAN_PACKAGE} failed: {_tail(installed)}")
    path = _on_path()
    if path is None:
        return Found(None, f"apt-get installed {DEBIAN_PACKAGE} but no chromium executable is on PATH")
    return Found(path)
