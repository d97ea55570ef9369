"""Coalescing: concurrent requests' images go to the model together, and each request gets its own rows back."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

from service.coalesce import Coalescer

pytestmark = pytest.mark.serving


def run(coalescer: Coalescer, requests: list[list]) -> list:
    async def all_at_once():
        return await asyncio.gather(*(coalescer(images) for images in requests), return_exceptions=True)
    return asyncio.run(all_at_once())


def test_waiting_requests_share_one_call_and_get_their_own_rows():
    calls, sizes = [], []

    async def double(images: list) -> np.ndarray:
        calls.append(len(images))
        await asyncio.sleep(0.01)
        return np.array(images)[:, None] * 2

    requests = [[i] * n for i, n in enumerate([1, 2, 1, 3, 1])]
    answers = run(Coalescer(double, max_images=64, calls=1, on_batch=sizes.append), requests)
    assert [a[:, 0].tolist() for a in answers] == [[2 * v for v in r] for r in requests]
    assert calls == sizes == [8]  # all five arrived before the call went out: one call


def test_requests_arriving_during_a_call_go_together_in_the_next():
    calls = []

    async def slow(images: list) -> np.ndarray:
        calls.append(len(images))
        await asyncio.sleep(0.05)
        return np.array(images)

    async def staggered():
        coalescer = Coalescer(slow, max_images=64, calls=1)
        first = asyncio.ensure_future(coalescer([0]))
        await asyncio.sleep(0.01)  # the first call is in flight now
        rest = [asyncio.ensure_future(coalescer([1, 2])) for _ in range(3)]
        return await asyncio.gather(first, *rest)

    answers = asyncio.run(staggered())
    assert [len(a) for a in answers] == [1, 2, 2, 2] and calls == [1, 6]


def test_no_call_exceeds_max_images():
    calls = []

    async def echo(images: list) -> np.ndarray:
        calls.append(len(images))
        return np.array(images)

    run(Coalescer(echo, max_images=4, calls=1), [[0, 0, 0] for _ in range(5)])
    assert max(calls) <= 4 and sum(calls) == 15


def test_an_error_reaches_every_request_of_that_call_and_the_next_call_still_runs():
    async def flaky(images: list) -> np.ndarray:
        if images[0] == 0:
            raise ConnectionError("model worker gone")
        return np.array(images)

    coalescer = Coalescer(flaky, max_images=1, calls=1)
    answers = run(coalescer, [[0], [1]])
    assert isinstance(answers[0], ConnectionError) and answers[1].tolist() == [1]
    assert coalescer.running == 0 and not coalescer.pending


def test_calls_in_flight_are_bounded():
    in_flight, most = 0, 0

    async def slow(images: list) -> np.ndarray:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        return np.array(images)

    run(Coalescer(slow, max_images=1, calls=2), [[0] for _ in range(8)])
    assert most == 2


@pytest.mark.parametrize("calls", [1, 2])
def test_an_idle_coalescer_sends_at_once(calls: int):
    async def echo(images: list) -> np.ndarray:
        return np.array(images)

    assert run(Coalescer(echo, max_images=64, calls=calls), [[7]])[0].tolist() == [7]


def test_a_request_that_times_out_does_not_stop_the_others_answers():
    """A request cancelled at its timeout, while its batch is being classified or while it waits for
    the next: the others of both batches are still answered, and the cancelled one is not classified."""
    calls = []

    async def slow(images: list) -> np.ndarray:
        calls.append(list(images))
        await asyncio.sleep(0.1)
        return np.array(images)[:, None]

    async def scenario():
        coalescer = Coalescer(slow, max_images=64, calls=1)
        first = [asyncio.ensure_future(coalescer([i])) for i in (1, 2)]
        await asyncio.sleep(0.02)  # the first batch (1, 2) is being classified; 3 and 4 wait for the next
        later = [asyncio.ensure_future(coalescer([i])) for i in (3, 4)]
        await asyncio.sleep(0)
        first[0].cancel()  # times out during its batch's call
        later[0].cancel()  # times out while waiting
        return await asyncio.wait_for(asyncio.gather(*first, *later, return_exceptions=True), 2)

    one, two, three, four = asyncio.run(scenario())
    assert isinstance(one, asyncio.CancelledError) and isinstance(three, asyncio.CancelledError)
    assert two[:, 0].tolist() == [2] and four[:, 0].tolist() == [4]
    assert calls == [[1, 2], [4]]
