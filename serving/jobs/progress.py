"""The batch job's progress: a tqdm bar on a terminal, a log line every few seconds otherwise.

tqdm is optional (the serving image has none): without it, a bar asked for becomes log lines, said once.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

LOG = logging.getLogger(__name__)

LOG_INTERVAL_S = 10.0


def _tqdm() -> Any:
    """tqdm's bar class, or None when tqdm is not installed."""
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm


class Progress:
    """A tqdm bar (images/s, ETA) on a terminal; a log line every LOG_INTERVAL_S seconds otherwise."""

    def __init__(self, total: int, mode: str = "auto", interval_s: float = LOG_INTERVAL_S) -> None:
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "log"
        self.mode = mode
        self.total = total
        self.done = 0
        self.interval_s = interval_s
        self._start = time.monotonic()
        self._last_log = self._start
        self._bar = None
        if mode == "bar":
            tqdm = _tqdm()
            if tqdm is None:
                LOG.info(
                    "no progress bar: tqdm is not installed (pip install tqdm); logging progress instead"
                )
                self.mode = "log"
            else:
                self._bar = tqdm(total=total, unit="img", dynamic_ncols=True, smoothing=0.1)

    def update(self, count: int) -> None:
        self.done += count
        if self._bar is not None:
            self._bar.update(count)
            return
        now = time.monotonic()
        if self.mode == "log" and now - self._last_log >= self.interval_s:
            self._last_log = now
            rate = self.done / (now - self._start)
            remaining = (self.total - self.done) / rate if rate > 0 else float("inf")
            LOG.info(
                "%d/%d images (%.1f%%), %.1f images/s, ETA %s",
                self.done,
                self.total,
                100.0 * self.done / max(self.total, 1),
                rate,
                _duration(remaining),
            )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _duration(seconds: float) -> str:
    if seconds == float("inf"):
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
