"""Overload is refused, not queued forever: a bound on the requests the service holds at once.

    IMAGE_CLASSIFIER_MAX_IN_FLIGHT   requests being answered or waiting in one API worker, at most (default 64)

One request more gets 503 with `Retry-After` and a JSON body at once, so the clients (or a load
balancer) back off or go elsewhere while the accepted requests keep a bounded latency. A 503 from
further in (the model worker's batch queue over its latency limit) gets the same `Retry-After`.
Health checks are never refused.
"""
from __future__ import annotations

import json
import os

MAX_IN_FLIGHT_ENV = "IMAGE_CLASSIFIER_MAX_IN_FLIGHT"
DEFAULT_MAX_IN_FLIGHT = 64  # per API worker: 128 in all with the default two, under 1 s of queue on 2 cores
RETRY_AFTER_S = 1
OPEN_PATHS = frozenset({"/livez", "/readyz", "/healthz", "/metrics"})


def configured_limit() -> int:
    raw = os.environ.get(MAX_IN_FLIGHT_ENV, str(DEFAULT_MAX_IN_FLIGHT))
    if not raw.isdigit() or int(raw) < 1:
        raise RuntimeError(f"{MAX_IN_FLIGHT_ENV}={raw!r}: give a whole number of requests >= 1, e.g. 64")
    return int(raw)


class Admission:
    """ASGI middleware: at most `limit` requests inside at once; the next one gets 503 + Retry-After."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit, self.inside = app, limit, 0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        if self.inside >= self.limit:
            await refuse(send, f"the service is at its limit of {self.limit} requests at once; retry shortly")
            return
        self.inside += 1  # one event loop: no lock needed between the check and the count
        try:
            await self.app(scope, receive, with_retry_after(send))
        finally:
            self.inside -= 1


def with_retry_after(send):
    """`send` that adds Retry-After to any 503 the app itself answers."""
    async def wrapped(message) -> None:
        if message["type"] == "http.response.start" and message["status"] == 503:
            headers = [h for h in message.get("headers", []) if h[0].lower() != b"retry-after"]
            message = {**message, "headers": [*headers, (b"retry-after", str(RETRY_AFTER_S).encode())]}
        await send(message)
    return wrapped


async def refuse(send, detail: str) -> None:
    body = json.dumps({"error": "overloaded", "detail": detail}).encode()
    await send({"type": "http.response.start", "status": 503, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(RETRY_AFTER_S).encode())]})
    await send({"type": "http.response.body", "body": body})
