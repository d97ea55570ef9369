"""Map a function over many files on every core, with a progress bar showing files/s."""
from __future__ import annotations

import contextlib
import os
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Callable, Sequence, TypeVar

from tqdm import tqdm

T = TypeVar("T")
R = TypeVar("R")
CHUNK = 32  # items per task: large enough to amortise inter-process traffic, small for a smooth bar


def cpu_count() -> int:
    """Cores this process may use (respects CPU affinity and container limits where visible)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def map_chunks(
    work: Callable[[Sequence[T]], list[R]], items: Sequence[T], desc: str, workers: int | None = None
) -> list[R]:
    """work(chunk) -> results for every CHUNK-sized slice of items, in order.

    Worker processes are forked, so they start in milliseconds without re-importing anything;
    `work` must be picklable (a module-level function or a functools.partial of one).
    """
    workers = workers or cpu_count()
    chunks = [items[i:i + CHUNK] for i in range(0, len(items), CHUNK)]
    results: list[R] = []
    with tqdm(total=len(items), desc=desc, unit="file", disable=None, smoothing=0.1) as bar, \
            contextlib.ExitStack() as stack:
        if workers > 1 and len(chunks) > 1:
            pool = stack.enter_context(ProcessPoolExecutor(workers, mp_context=get_context("fork")))
            done = pool.map(work, chunks)
        else:
            done = map(work, chunks)
        for chunk_results in done:
            results += chunk_results
            bar.update(len(chunk_results))
    return results
