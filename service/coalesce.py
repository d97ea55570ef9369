"""Adaptive batching: the images of concurrent requests in one forward pass (see Coalescer)."""
from __future__ import annotations

import asyncio
from typing import Awaitable, Callable

import numpy as np


class Coalescer:
    """The images of concurrent requests in one call: `call(images)` -> one row per image.

    While `calls` calls are in flight, the images that arrive wait and go together in the next one,
    up to `max_images`: no timer, so an idle service adds no delay and a busy one sends big batches.
    Batching here rather than in the model worker lets one call preprocess the whole batch, costs one
    hop to the model worker per batch instead of per request, and keeps each batch on one model while
    production changes (docs/performance.md).
    """

    def __init__(self, call: Callable[[list], Awaitable[np.ndarray]], max_images: int, calls: int,
                 on_batch: Callable[[int], None] = lambda size: None) -> None:
        self.call, self.max_images, self.calls, self.on_batch = call, max_images, calls, on_batch
        self.pending: list[tuple[list, asyncio.Future]] = []
        self.running = 0

    async def __call__(self, images: list) -> np.ndarray:
        future = asyncio.get_running_loop().create_future()
        self.pending.append((images, future))
        if self.running < self.calls:
            self.running += 1
            asyncio.get_running_loop().create_task(self.send_pending())
        return await future

    async def send_pending(self) -> None:
        try:
            while self.pending:
                taken, count = [], 0
                while self.pending and (not taken or count + len(self.pending[0][0]) <= self.max_images):
                    images, future = self.pending.pop(0)
                    if not future.done():  # a request cancelled while waiting (its timeout) needs no answer
                        taken.append((images, future))
                        count += len(images)
                if not taken:
                    continue
                self.on_batch(count)
                try:
                    out = await self.call([image for images, _ in taken for image in images])
                except Exception as err:  # each request answers with the error, as if it had called alone
                    for _, future in taken:
                        if not future.done():
                            future.set_exception(err)
                    continue
                start = 0
                for images, future in taken:  # one cancelled during the call must not stop the others' answers
                    if not future.done():
                        future.set_result(out[start:start + len(images)])
                    start += len(images)
        finally:
            self.running -= 1
