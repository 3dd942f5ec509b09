"""The worker's decode budget: requests take turns in arrival order, a late one gets DEADLINE_EXCEEDED."""

from __future__ import annotations

import asyncio

import pytest

from cnnserve.serving.core.decode_budget import DecodeBudget
from cnnserve.serving.errors import DeadlineExpiredError, InvalidRequestError


def test_requests_take_turns_in_arrival_order() -> None:
    async def scenario() -> list[str]:
        budget = DecodeBudget(100)
        order: list[str] = []

        async def request(name: str, pixels: int, hold: float) -> None:
            async with budget.hold(pixels):
                order.append(f"{name} in ({budget.in_use})")
                await asyncio.sleep(hold)

        await asyncio.gather(
            request("a", 60, 0.02), request("b", 60, 0.01), request("c", 30, 0.01), request("d", 10, 0)
        )
        assert budget.in_use == 0
        return order

    # b waits for a; c and d wait behind b although they would fit beside a (first come, first served),
    # then all three go in together once a is done (60 + 30 + 10).
    assert asyncio.run(scenario()) == ["a in (60)", "b in (100)", "c in (100)", "d in (100)"]


def test_a_request_past_its_deadline_leaves_the_queue_and_the_next_one_goes() -> None:
    async def scenario() -> tuple[type[BaseException] | None, int]:
        budget = DecodeBudget(100)
        loop = asyncio.get_running_loop()
        async with budget.hold(80):
            late = asyncio.ensure_future(_hold(budget, 50, loop.time() + 0.01))
            small = asyncio.ensure_future(_hold(budget, 20, None))
            outcome = await asyncio.gather(late, return_exceptions=True)
            await small  # fits beside the first once the late one gave up its place
        error = outcome[0]
        return (type(error) if isinstance(error, BaseException) else None), budget.in_use

    assert asyncio.run(scenario()) == (DeadlineExpiredError, 0)


async def _hold(budget: DecodeBudget, pixels: int, deadline: float | None) -> None:
    async with budget.hold(pixels, deadline):
        await asyncio.sleep(0)


def test_a_request_larger_than_the_whole_budget_is_refused_at_once() -> None:
    async def scenario() -> None:
        async with DecodeBudget(100).hold(101):
            pass

    with pytest.raises(InvalidRequestError, match="--max-decode-pixels"):
        asyncio.run(scenario())


def test_a_cancelled_waiter_gives_its_place_back() -> None:
    async def scenario() -> int:
        budget = DecodeBudget(100)
        async with budget.hold(100):
            waiter = asyncio.ensure_future(_hold(budget, 100, None))
            await asyncio.sleep(0)
            waiter.cancel()
            await asyncio.gather(waiter, return_exceptions=True)
        await _hold(budget, 100, None)
        return budget.in_use

    assert asyncio.run(scenario()) == 0
