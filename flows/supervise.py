"""The operations stack's processes: started in order, stopped in reverse, restarted when one dies.

A part that dies (killed, out of memory, a crash) is started again at once with the same command
and log, so a killed worker or server does not take the stack down or wait for a person; one that
keeps dying (RESTARTS times within RESTART_WINDOW seconds) stops the stack with one line naming it.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import deque
from contextlib import ExitStack
from pathlib import Path

from tasks.common.config import UserError

RESTARTS = 3
RESTART_WINDOW = 600


def start(name: str, cmd: list[str], env: dict[str, str], logs: Path) -> subprocess.Popen:
    """A child in its own session, so that Ctrl-C reaches only this process and the stack stops in order."""
    with (logs / f"{name}.log").open("ab") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen, seconds: float = 20) -> None:
    """SIGTERM to the child's whole process group (its own children too), SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, seconds), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


class Children:
    """The stack's child processes by name; `stack` stops each (its newest process) in reverse order."""

    def __init__(self, stack: ExitStack, logs: Path):
        self.stack, self.logs = stack, logs
        self.procs: dict[str, subprocess.Popen] = {}
        self.commands: dict[str, tuple[list[str], dict[str, str]]] = {}
        self.restarts: dict[str, deque[float]] = {}

    def start(self, name: str, cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
        self.procs[name] = start(name, cmd, env, self.logs)
        self.commands[name] = (cmd, env)
        self.restarts[name] = deque(maxlen=RESTARTS)
        self.stack.callback(lambda: stop(self.procs[name]))
        return self.procs[name]

    def restart_dead(self) -> list[str]:
        """Start again each child that has exited; a line per restart. UserError for one that keeps dying."""
        lines = []
        for name, proc in self.procs.items():
            if proc.poll() is None:
                continue
            recent = self.restarts[name]
            now = time.monotonic()
            if len(recent) == RESTARTS and now - recent[0] < RESTART_WINDOW:
                raise UserError(f"{name} stopped {RESTARTS + 1} times within {RESTART_WINDOW // 60} min "
                                f"(last exit {proc.returncode}); see {self.logs / name}.log")
            recent.append(now)
            self.procs[name] = start(name, *self.commands[name], self.logs)
            lines.append(f"{name} stopped (exit {proc.returncode}); started again (log: {self.logs / name}.log)")
        return lines
