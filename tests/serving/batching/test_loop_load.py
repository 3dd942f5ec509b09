"""The event-loop load meter the adaptive batcher reads: a real selector loop, idle and busy."""

from __future__ import annotations

import asyncio
import time

from cnnserve.serving.batching import loop_load


def _measure(work: bool) -> float:
    async def scenario() -> float:
        end = time.perf_counter() + 0.5
        while time.perf_counter() < end:
            if work:
                spin = time.perf_counter() + 0.004
                while time.perf_counter() < spin:  # a callback holding the loop, as decoding does
                    pass
                await asyncio.sleep(0)
            else:
                await asyncio.sleep(0.004)  # the loop waits in its selector
        meter = loop_load.for_loop(asyncio.get_running_loop())
        assert meter is not None
        return meter.busy()

    with asyncio.Runner(loop_factory=loop_load.new_event_loop) as runner:
        return runner.run(scenario())


def test_a_loop_waiting_for_io_is_idle_and_one_running_callbacks_is_busy() -> None:
    assert _measure(work=False) < 0.3
    assert _measure(work=True) > 0.9


def test_other_loops_have_no_meter() -> None:
    async def scenario() -> loop_load.LoopLoad | None:
        return loop_load.for_loop(asyncio.get_running_loop())

    assert asyncio.run(scenario()) is None


def test_a_window_completes_on_waking_so_a_long_idle_spell_shows() -> None:
    meter = loop_load.LoopLoad(window_s=0.1)
    start = time.perf_counter()
    meter.add_idle(start, start + 0.02)
    assert meter.busy() == 1.0  # no window complete yet
    meter.add_idle(start + 0.03, start + 5.0)  # blocked for seconds, then woken
    assert meter.busy() < 0.01
