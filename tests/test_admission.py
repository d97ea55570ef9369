"""Overload is refused at once with 503 and Retry-After, on a real ASGI app; health checks never are."""
from __future__ import annotations

import asyncio

import httpx
import pytest

from service.admission import MAX_IN_FLIGHT_ENV, Admission, configured_limit

pytestmark = pytest.mark.serving


def slow_app(release: asyncio.Event, status: int = 200):
    async def app(scope, receive, send) -> None:
        if scope["path"] == "/classify":
            await release.wait()  # a request being answered, holding its place
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})
    return app


async def burst(limit: int, requests: int, status: int = 200) -> list[httpx.Response]:
    release = asyncio.Event()
    transport = httpx.ASGITransport(app=Admission(slow_app(release, status), limit=limit))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        calls = [asyncio.ensure_future(client.post("/classify")) for _ in range(requests)]
        await asyncio.sleep(0.05)  # every request has arrived; `limit` of them are inside, waiting
        health = await asyncio.wait_for(client.get("/readyz"), 1) if status == 200 else None
        release.set()
        answers = await asyncio.gather(*calls)
        return answers + ([health] if health is not None else [])


def test_requests_beyond_the_limit_get_503_with_retry_after_and_the_rest_are_answered():
    answers = asyncio.run(burst(limit=4, requests=10))
    statuses = sorted(r.status_code for r in answers[:10])
    assert statuses == [200] * 4 + [503] * 6
    refused = next(r for r in answers if r.status_code == 503)
    assert refused.headers["retry-after"] == "1" and refused.json()["error"] == "overloaded"
    assert answers[10].status_code == 200  # the health check went through while the service was full
    assert [r.status_code for r in asyncio.run(burst(limit=4, requests=4))] == [200] * 4 + [200]  # slots freed


def test_a_503_from_inside_gets_retry_after_too():
    answers = asyncio.run(burst(limit=4, requests=1, status=503))
    assert answers[0].status_code == 503 and answers[0].headers["retry-after"] == "1"


def test_the_limit_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv(MAX_IN_FLIGHT_ENV, raising=False)
    assert configured_limit() == 64
    monkeypatch.setenv(MAX_IN_FLIGHT_ENV, "16")
    assert configured_limit() == 16
    for bad in ("0", "many", "-3"):
        monkeypatch.setenv(MAX_IN_FLIGHT_ENV, bad)
        with pytest.raises(RuntimeError, match=MAX_IN_FLIGHT_ENV):
            configured_limit()
