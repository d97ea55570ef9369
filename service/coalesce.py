"""Concurrent requests' images in one call to the model worker (see Coalescer)."""
from __future__ import annotations

import asyncio

import numpy as np


class Coalescer:
    """The images of concurrent requests in one call to the model worker.

    Each call to another process costs milliseconds of parsing on both sides, more than the forward
    pass of one 32 px image (docs/performance.md), so one call per request would spend the model
    worker on calls. Here, while `calls` calls are in flight, the images that arrive wait and go
    together in the next one, up to `max_images`: no timer, so an idle service adds no delay, and a
    busy one sends big batches (which the model worker's adaptive batching merges further).
    """

    def __init__(self, call, max_images: int, calls: int) -> None:
        self.call, self.max_images, self.calls = call, max_images, calls
        self.pending: list[tuple[np.ndarray, asyncio.Future]] = []
        self.running = 0

    async def __call__(self, batch: np.ndarray) -> np.ndarray:
        future = asyncio.get_running_loop().create_future()
        self.pending.append((batch, future))
        if self.running < self.calls:
            self.running += 1
            asyncio.get_running_loop().create_task(self.send_pending())
        return await future

    async def send_pending(self) -> None:
        try:
            while self.pending:
                taken, images = [], 0
                while self.pending and (not taken or images + len(self.pending[0][0]) <= self.max_images):
                    taken.append(self.pending.pop(0))
                    images += len(taken[-1][0])
                try:
                    out = await self.call(np.concatenate([batch for batch, _ in taken]))
                except Exception as err:  # each request answers with the error, as if it had called alone
                    for _, future in taken:
                        future.set_exception(err)
                    continue
                start = 0
                for batch, future in taken:
                    future.set_result(out[start:start + len(batch)])
                    start += len(batch)
        finally:
            self.running -= 1
