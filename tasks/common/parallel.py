"""Map a function over many files on this process's cores, with a progress bar showing files/s."""
from __future__ import annotations

import contextlib
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Callable, Sequence, TypeVar

from tqdm import tqdm

from tasks.common.threads import cores

T = TypeVar("T")
R = TypeVar("R")
CHUNK = 32  # items per task: large enough to amortise inter-process traffic, small for a smooth bar


def map_chunks(
    work: Callable[[Sequence[T]], list[R]], items: Sequence[T], desc: str, workers: int | None = None
) -> list[R]:
    """work(chunk) -> results for every CHUNK-sized slice of items, in order.

    Worker processes are forked, so they start in milliseconds without re-importing anything;
    `work` must be picklable (a module-level function or a functools.partial of one).
    """
    workers = workers or cores()  # IMGCLF_THREADS, else every core it may run on
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
