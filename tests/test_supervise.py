"""The operations stack's process keeper with real processes: a killed part comes back by itself, one
that keeps dying stops the stack with one line, and stopping takes the whole process group."""
from __future__ import annotations

import os
import signal
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import pytest

from flows.supervise import RESTARTS, Children
from tasks.common.config import UserError

pytestmark = pytest.mark.ops

SLEEPER = [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(600)"]


def wait_until(condition, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_a_killed_part_is_started_again_and_stopping_ends_it(tmp_path: Path):
    with ExitStack() as stack:
        children = Children(stack, tmp_path)
        first = children.start("worker", SLEEPER, dict(os.environ))
        assert children.restart_dead() == []  # all alive: nothing to do
        wait_until(lambda: "up" in (tmp_path / "worker.log").read_text())
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)

        (line,) = children.restart_dead()

        assert line.startswith("worker stopped (exit -9); started again")
        second = children.procs["worker"]
        assert second.pid != first.pid and second.poll() is None
        wait_until(lambda: (tmp_path / "worker.log").read_text().count("up") == 2)  # one log, appended
    assert second.poll() is not None  # the stack's exit stopped the new process, not just the first


def test_a_part_that_keeps_dying_stops_the_stack_with_one_line(tmp_path: Path):
    with ExitStack() as stack:
        children = Children(stack, tmp_path)
        children.start("evidently-ui", [sys.executable, "-c", "raise SystemExit(3)"], dict(os.environ))
        for _ in range(RESTARTS):
            wait_until(lambda: children.procs["evidently-ui"].poll() is not None)
            assert children.restart_dead()
        wait_until(lambda: children.procs["evidently-ui"].poll() is not None)
        with pytest.raises(UserError, match=r"evidently-ui stopped 4 times within 10 min \(last exit 3\); see .*evidently-ui.log"):
            children.restart_dead()
