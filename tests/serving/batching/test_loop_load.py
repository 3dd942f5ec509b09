"""The event-loop load meter the adaptive batcher reads: a real selector loop, idle and busy."""

from __future__ import annotations

import asyncio
import time

from cnnserve.serving.batching import loop_load


class RecordingLoad(loop_load.LoopLoad):
    """A meter that also keeps every wait the selector reported."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[float] = []

    def add_idle(self, start: float, end: float) -> None:
        self.waits.append(end - start)
        super().add_idle(start, end)


def _waits(work: bool) -> list[float]:
    """The waits a real selector loop reports over 25 steps: sleeping 4 ms, or a 4 ms callback each."""

    async def scenario() -> None:
        for _ in range(25):
            if work:
                spin = time.perf_counter() + 0.004
                while time.perf_counter() < spin:  # a callback holding the loop, as decoding does
                    pass
                await asyncio.sleep(0)
            else:
                await asyncio.sleep(0.004)  # the loop waits in its selector

    load = RecordingLoad()
    with asyncio.Runner(
        loop_factory=lambda: asyncio.SelectorEventLoop(loop_load._TimedSelector(load))
    ) as runner:
        runner.run(scenario())
    return load.waits


def test_a_loop_waiting_for_io_reports_its_waits_and_one_running_callbacks_reports_none() -> None:
    """Judged by what the selector reports, not by wall-clock shares a loaded machine would skew: every
    4 ms sleep is a reported wait of at least about 4 ms; ready callbacks only poll, which is not a wait."""
    idle = _waits(work=False)
    assert len(idle) >= 25 and sum(idle) >= 25 * 0.004 * 0.9
    assert _waits(work=True) == []


def test_the_busy_share_is_one_minus_the_idle_share_of_each_complete_window() -> None:
    # Offsets are binary fractions, so `start + offset - start` is exact whatever perf_counter's value:
    # the window boundary is met exactly, not missed by a rounding of the clock reading.
    meter = loop_load.LoopLoad(window_s=0.125)
    start = meter._start
    meter.add_idle(start, start + 0.03125)
    assert meter.busy() == 1.0  # no window complete yet
    meter.add_idle(start + 0.0625, start + 0.125)  # 0.09375 s idle of 0.125 s: a quarter busy
    assert meter.busy() == 0.25
    meter.add_idle(start + 0.125, start + 0.375)  # a window of nothing but waiting
    assert meter.busy() == 0.0


def test_the_real_loop_has_a_meter() -> None:
    async def scenario() -> loop_load.LoopLoad | None:
        return loop_load.for_loop(asyncio.get_running_loop())

    with asyncio.Runner(loop_factory=loop_load.new_event_loop) as runner:
        meter = runner.run(scenario())
    assert isinstance(meter, loop_load.LoopLoad) and meter.busy() == 1.0  # no window completed yet


def test_other_loops_have_no_meter() -> None:
    async def scenario() -> loop_load.LoopLoad | None:
        return loop_load.for_loop(asyncio.get_running_loop())

    assert asyncio.run(scenario()) is None


def test_a_window_completes_on_waking_so_a_long_idle_spell_shows() -> None:
    meter = loop_load.LoopLoad(window_s=0.125)
    start = meter._start  # the window's own start: no time read here, however slow the machine
    meter.add_idle(start, start + 0.03125)
    assert meter.busy() == 1.0  # no window complete yet
    meter.add_idle(start + 0.0625, start + 8.0)  # blocked for seconds, then woken
    assert meter.busy() == 1.0 - (8.0 - 0.0625 + 0.03125) / 8.0  # 0.03125 s busy of 8 s
