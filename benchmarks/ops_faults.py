"""Faults while the operations stack runs, and how long it takes to recover from each.

Starts `python -m flows.ops` on loopback in a scratch project (the test suite's: 30 tiny images, one
epoch), then, in order:
    worker killed     kill -9 of the worker and every process under it (the retrain's flow run too)
                      while a retrain trains. Measured: when the stack restarted the worker, when
                      the killed run left Running (Prefect's heartbeat automation), and whether the
                      next retrain then completes and promotes (DVC's locks, the production pointer).
    server restarted  kill -9 of the Prefect server while a monitor run judges a window of traffic
                      the service logged. Measured: when the server answered again, the run's final
                      state, and that the window was recorded once.
    disk full         <ops.home>/monitor on a small tmpfs filled to the last few KiB while a monitor
                      run writes its window (needs root, to mount): the run's state and message,
                      what was left on disk, and whether the next window, once there is room,
                      judges the traffic the failed one held.
Prints one JSON line per fault and a last line with every check's outcome. About 4 minutes on 2 cores.
    python benchmarks/ops_faults.py          # as root for the disk-full check
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from prefect.client.orchestration import get_client  # noqa: E402
from prefect.deployments import run_deployment  # noqa: E402
from prefect.settings import PREFECT_API_URL, temporary_settings  # noqa: E402

from tasks.common.paths import POINTER  # noqa: E402
from tasks.model.registry import read_pointer  # noqa: E402
from tasks.monitoring.windows import read_windows  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.projects import new_project  # noqa: E402

READY = "Ctrl-C stops everything."


class Stack:
    """`python -m flows.ops` with its output collected, each line with the time it came."""

    def __init__(self, root: Path, env: dict):
        self.proc = subprocess.Popen([sys.executable, "-m", "flows.ops"], cwd=root, env=env, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.lines: list[tuple[float, str]] = []
        threading.Thread(target=self._read, daemon=True).start()
        wait_for(lambda: any(READY in line for _, line in self.lines) or self.proc.poll() is not None, 300)
        if self.proc.poll() is not None:
            raise SystemExit("the stack did not start:\n" + "".join(line for _, line in self.lines))

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append((time.monotonic(), line))

    def said_after(self, since: float, text: str) -> float | None:
        return next((t for t, line in self.lines if t >= since and text in line), None)

    def child(self, *words: str) -> psutil.Process:
        """The stack's child process whose command line holds all `words`."""
        for proc in psutil.Process(self.proc.pid).children():
            if all(word in " ".join(proc.cmdline()) for word in words):
                return proc
        raise LookupError(words)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(120)


def wait_for(condition, seconds: float, step: float = 0.5):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(step)
    return None


def run_state(run_id) -> tuple[str, str]:
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(run_id).state
    return state.type.value, state.name


def kill_tree(proc: psutil.Process) -> int:
    """kill -9 of a process and everything under it; returns how many processes that was."""
    victims = [proc, *proc.children(recursive=True)]
    for victim in victims:
        try:
            victim.kill()
        except psutil.NoSuchProcess:
            pass
    return len(victims)


def worker_killed(stack: Stack, root: Path) -> dict:
    run = run_deployment("retrain/retrain", parameters={"trigger": "manual"}, timeout=0)
    wait_for(lambda: run_state(run.id)[0] == "RUNNING", 120)
    time.sleep(25)  # into the pipeline: the dvc stages are running
    killed_at = time.monotonic()
    killed = kill_tree(stack.child("worker", "start"))
    restarted = wait_for(lambda: stack.said_after(killed_at, "worker stopped"), 30)
    left_running = wait_for(lambda: run_state(run.id)[0] != "RUNNING" and time.monotonic(), 300, step=2)
    after = run_state(run.id)
    started = time.monotonic()
    second = run_deployment("retrain/retrain", parameters={"trigger": "manual"}, timeout=900)
    pointer = read_pointer(root / POINTER)  # raises on a half-written file
    return {"fault": "worker killed mid-retrain", "processes_killed": killed,
            "worker_restarted_s": round(restarted - killed_at, 1) if restarted else None,
            "killed_run_left_running_s": round(left_running - killed_at, 1) if left_running else None,
            "killed_run_state": after, "next_retrain": second.state.name,
            "next_retrain_s": round(time.monotonic() - started, 1),
            "production_after": (pointer["current"] or {}).get("model"),
            "ok": bool(restarted and left_running and after[0] == "CRASHED" and second.state.is_completed()
                       and pointer["current"])}


def log_traffic(service: str, image: Path, count: int) -> None:
    upload = [("images", (image.name, image.read_bytes(), "image/png"))] * 8
    for _ in range(count // 8):
        answer = httpx.post(service + "/classify", files=upload, timeout=60)
        answer.raise_for_status()


def server_restarted(stack: Stack, root: Path, api: str, service: str) -> dict:
    before = len(read_windows(root / ".ops"))
    log_traffic(service, next((root / "images/cat").iterdir()), 120)
    time.sleep(2)  # the service's log lines reach the file
    run = run_deployment("monitor/monitor", timeout=0)
    wait_for(lambda: run_state(run.id)[0] == "RUNNING", 120, step=0.2)
    killed_at = time.monotonic()
    stack.child("prefect", "server", "start").kill()
    back = wait_for(lambda: _healthy(api) and time.monotonic(), 120)
    final = wait_for(lambda: (s := run_state(run.id))[0] not in ("RUNNING", "PENDING", "SCHEDULED") and s, 300, step=2)
    windows = read_windows(root / ".ops")[before:]
    return {"fault": "Prefect server killed during a monitor run",
            "server_back_s": round(back - killed_at, 1) if back else None, "monitor_run_state": final,
            "windows_recorded": len(windows), "window_images": [w["images"] for w in windows],
            "ok": bool(back and final and final[0] == "COMPLETED" and len(windows) == 1)}


def _healthy(api: str) -> bool:
    try:
        return httpx.get(f"{api}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def disk_full(root: Path, service: str) -> dict:
    if os.geteuid() != 0:
        return {"fault": "disk full while a window is written", "ok": None, "not_run": "needs root to mount a tmpfs"}
    monitor_dir = root / ".ops/monitor"
    saved = Path(tempfile.mkdtemp()) / "monitor"
    shutil.copytree(monitor_dir, saved, symlinks=True)
    room = sum(p.stat().st_size for p in saved.rglob("*") if p.is_file()) + 8 * 2**20  # a drifted window fits
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={room}", "tmpfs", str(monitor_dir)], check=True)
    try:
        shutil.copytree(saved, monitor_dir, dirs_exist_ok=True)
        before = len(read_windows(root / ".ops"))
        log_traffic(service, next((root / "images/dog").iterdir()), 120)
        time.sleep(2)
        filler = monitor_dir / "filler"
        free = shutil.disk_usage(monitor_dir).free
        with filler.open("wb") as out:  # leave a few KiB: the report's first write fails
            out.write(b"\0" * max(0, free - 8192))
        failed = run_deployment("monitor/monitor", timeout=600)
        left = sorted(p.name for p in (monitor_dir / "windows").iterdir()) if (monitor_dir / "windows").is_dir() else []
        recorded_while_full = len(read_windows(root / ".ops")) - before
        filler.unlink()
        freed_at = time.monotonic()
        second = run_deployment("monitor/monitor", timeout=600)
        windows = read_windows(root / ".ops")[before:]
        return {"fault": "disk full while a window is written", "failed_run": failed.state.name,
                "message": failed.state.message, "windows_recorded_while_full": recorded_while_full,
                "partial_folders_left": [name for name in left if name.startswith(".")],
                "next_window": second.state.name, "next_window_images": [w["images"] for w in windows],
                "recovered_s": round(time.monotonic() - freed_at, 1),
                "ok": bool(failed.state.is_failed() and recorded_while_full == 0 and second.state.is_completed()
                           and len(windows) == 1 and windows[0]["images"] >= 120)}
    finally:
        subprocess.run(["umount", str(monitor_dir)], check=False)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python benchmarks/ops_faults.py", description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="ops-faults-"))
    ports = {name: free_port() for name in ("prefect_port", "evidently_port", "service_port", "label_studio_port")}
    root = new_project(base / "project", code=("tasks", "flows", "service"), ops=ports,
                       monitor={"min_traffic": 100})
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw["ops"]["retrain"]["cooldown_minutes"] = 0
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    env = {**os.environ, "BENTOML_HOME": str(base / "bentoml")}
    api = f"http://127.0.0.1:{ports['prefect_port']}/api"
    service = f"http://127.0.0.1:{ports['service_port']}"
    results = []
    stack = Stack(root, env)
    try:
        with temporary_settings(updates={PREFECT_API_URL: api}):
            results.append(worker_killed(stack, root))
            print(json.dumps(results[-1]), flush=True)
            wait_for(lambda: _ready(service), 180)
            results.append(server_restarted(stack, root, api, service))
            print(json.dumps(results[-1]), flush=True)
            results.append(disk_full(root, service))
            print(json.dumps(results[-1]), flush=True)
    finally:
        code = stack.stop()
        shutil.rmtree(base, ignore_errors=True)
    said = [line.strip() for _, line in stack.lines if "started again" in line]
    print(json.dumps({"checks": {r["fault"]: r["ok"] for r in results}, "stack_exit": code, "stack_said": said}),
          flush=True)


def _ready(service: str) -> bool:
    try:
        return httpx.get(service + "/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


if __name__ == "__main__":
    main()
