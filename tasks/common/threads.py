"""How many cores a process that trains or scores computes on, and thread pools that sleep when idle.

Every such process (a stage, a search process, the monitor flow, the service's model worker) sizes
PyTorch's and ONNX Runtime's thread pools by `cores()`: IMGCLF_THREADS when set, else every core it
may run on (CPU affinity) but one, which stays with whatever else runs there (the service's API
worker, a drift check, the shell). Processes started side by side divide that between them
(tune.parallel, the test workers). Idle threads sleep instead of spinning (OMP_WAIT_POLICY=PASSIVE,
set by tasks/__init__.py before PyTorch loads; ONNX Runtime's allow_spinning off): spinning pools in
two processes on the same cores cut a training to 3-27% of its rate alone, where sleeping ones keep
it above 90% (docs/performance.md, "Sharing the cores", has the figures).
"""
from __future__ import annotations

import os
import sys

from tasks.common.config import UserError

THREADS_ENV = "IMGCLF_THREADS"


def available_cores() -> int:
    """Cores this process may run on (CPU affinity, container limits where visible)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cores(share: int = 1) -> int:
    """The threads one of `share` processes side by side computes with: IMGCLF_THREADS (or every
    available core but one) divided between them, at least one."""
    value = os.environ.get(THREADS_ENV, "").strip()
    if value and not (value.isdigit() and int(value) >= 1):
        raise UserError(f"{THREADS_ENV}={value!r}: the threads to compute with, a whole number >= 1; "
                        "unset it to use every core this process may run on but one")
    return max(1, (int(value) if value else available_cores() - 1) // share)


def use_cores(share: int = 1) -> int:
    """Size this process's PyTorch thread pool by its share of the cores; returns the thread count.

    Processes that torchrun starts side by side on this machine (LOCAL_WORLD_SIZE) share it too. A
    process that has not imported PyTorch (a stage that only reads files) is left without it.
    """
    threads = cores(share * int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)
    return threads
