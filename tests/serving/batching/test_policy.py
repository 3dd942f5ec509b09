"""The batcher's wait policies, decision by decision, at exact loop times (no clock involved)."""

from __future__ import annotations

import pytest

from cnnserve.serving.batching.policy import (
    CONCURRENCY_WINDOW_DELAYS,
    IDLE_BUSY_SHARE,
    AdaptiveWait,
    FixedWait,
    WindowedPeak,
)


def test_fixed_wait_always_waits_its_delay() -> None:
    policy = FixedWait(0.25)
    policy.arrived(0.0, concurrent=True, in_batcher=5)
    assert (policy.fill_delay(), policy.expects_more(100.0), policy.everyone_in(1.0, 50, 0)) == (
        0.25,
        True,
        False,
    )
    assert policy.arriving == 0


def test_windowed_peak_remembers_a_peak_for_one_to_two_windows() -> None:
    peak = WindowedPeak()
    assert peak.value(0.0, 10.0) == 0  # nothing seen yet
    peak.observe(0.0, 10.0, 3)  # window [0, 10]
    peak.observe(10.0, 10.0, 1)  # still the same window: its end is included
    assert peak.value(10.0, 10.0) == 3
    peak.observe(15.0, 10.0, 2)  # a new window from 15; the previous one (peak 3) is still remembered
    assert peak.value(15.0, 10.0) == 3
    assert peak.value(25.0, 10.0) == 3  # still the window from 15
    assert peak.value(26.0, 10.0) == 2  # a window from 26: the previous one's peak was 2, the 3 is gone
    peak.observe(30.0, 10.0, 5)
    assert peak.value(46.0, 10.0) == 5  # exactly two windows after 26: that window's peak still counts
    peak.observe(46.0, 10.0, 1)
    assert peak.value(67.0, 10.0) == 0  # more than two windows after 46: both forgotten


def test_a_lone_client_is_never_expected_to_send_more() -> None:
    policy = AdaptiveWait(0.01)
    for now in (0.0, 0.5, 1.0):
        policy.arrived(now, concurrent=False, in_batcher=1)
        assert not policy.expects_more(now)
    assert policy.window_s == pytest.approx(CONCURRENCY_WINDOW_DELAYS * 0.01)


def test_concurrent_traffic_is_expected_to_go_on_for_one_window() -> None:
    policy = AdaptiveWait(0.125)  # a window of 1.25 s (binary fractions: exact boundaries)
    policy.arrived(2.0, concurrent=True, in_batcher=4)
    policy.arrived(2.5, concurrent=False, in_batcher=1)  # a request alone does not move the window
    assert policy.expects_more(2.0) and policy.expects_more(3.25)
    assert not policy.expects_more(3.25 + 1e-9)
    policy.arriving = 1  # a request being decoded is always waited for
    assert policy.expects_more(50.0)


def test_everyone_is_in_when_every_client_seen_lately_has_a_request_waiting_or_computing() -> None:
    policy = AdaptiveWait(0.01)
    policy.arrived(0.0, concurrent=True, in_batcher=4)  # four clients at once
    assert not policy.everyone_in(0.01, waiting=2, computing=1)
    assert policy.everyone_in(0.01, waiting=3, computing=1)
    assert policy.everyone_in(0.01, waiting=4, computing=0)
    policy.arriving = 1
    assert not policy.everyone_in(0.01, waiting=4, computing=0)  # one more is on its way


@pytest.mark.parametrize(
    ("busy", "delay"),
    [(0.0, 0.0), (IDLE_BUSY_SHARE, 0.0), (0.75, 0.5), (0.9, 0.8), (1.0, 1.0), (1.5, 1.0), (-1.0, 0.0)],
)
def test_the_wait_is_scaled_by_how_busy_the_worker_is(busy: float, delay: float) -> None:
    assert AdaptiveWait(1.0, load=lambda: busy).fill_delay() == pytest.approx(delay)


def test_the_full_wait_when_the_load_is_unknown_or_a_request_is_on_its_way() -> None:
    assert AdaptiveWait(0.2).fill_delay() == 0.2
    idle = AdaptiveWait(0.2, load=lambda: 0.0)
    idle.arriving = 1
    assert idle.fill_delay() == 0.2
