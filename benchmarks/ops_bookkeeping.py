"""What the operations stack keeps, over a simulated month, and what checking for new data costs.

On a Prefect server of its own (SQLite, as `make ops` runs it) and a scratch project, it measures:
    check as a flow run   the former watch-data deployment: one flow run per check; the database
                          growth per run, and the CPU of the process a worker starts for each run
    check by the watcher  flows/watch_data.py's polling (watchfiles) of a data.root of --images
                          files: its CPU per poll, and a full check when something changed
    a month               --days of hourly monitor windows (Evidently report, snapshot, history line,
                          a real `monitor` flow run with its logs and artifact) on --per-hour images
                          of logged traffic (real log lines, one rotated file per day), then the
                          housekeeping flow as of the month's end with the project's ops.retention
and prints one JSON line per measurement: bytes of the Prefect database, of <ops.home> by part,
and of the traffic logs, before and after housekeeping. The windows' features are random numbers
with the logged columns, not a model's profile of images: the files and runs are what the monitor
writes, the drift verdicts mean nothing. Usage:
    python benchmarks/ops_bookkeeping.py                  # 30 days: about 25 min on 2 cores
    python benchmarks/ops_bookkeeping.py --days 2         # a quick look
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from prefect import flow  # noqa: E402
from prefect.settings import PREFECT_API_URL, temporary_settings  # noqa: E402

from flows.housekeeping import housekeeping  # noqa: E402
from flows.monitor import publish_window  # noqa: E402
from flows.ops import environment, wait_for_api  # noqa: E402
from flows.settings import FlowParams  # noqa: E402
from flows.supervise import start, stop  # noqa: E402
from flows.watch_data import check_data  # noqa: E402
from tasks.common.config import load_params  # noqa: E402
from tasks.monitoring.drift import drift_snapshot, summarize_drift  # noqa: E402
from tasks.monitoring.features import FEATURE_COLUMNS  # noqa: E402
from tasks.monitoring.windows import record_window, report_dir  # noqa: E402
from tasks.monitoring.workspace import add_window, open_project  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def database_bytes(home: Path) -> int:
    """The SQLite file with its write-ahead log, as it stands on disk."""
    return sum(size(p) for p in (home / "prefect").glob("prefect.db*"))


def features(rows: int, rng: np.random.Generator) -> pd.DataFrame:
    frame = pd.DataFrame(rng.normal(size=(rows, len(FEATURE_COLUMNS))), columns=FEATURE_COLUMNS)
    return frame.assign(confidence=rng.uniform(0.5, 1, rows), prediction=rng.choice(list("abcdefgh"), rows))


def scratch_project(base: Path, images: int) -> Path:
    root = base / "project"
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["data"]["root"] = "images"
    (root / "images" / "cat").mkdir(parents=True)
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    for i in range(images):  # the listing is what is checked: the files' contents do not matter
        (root / "images" / ("cat" if i % 2 else "dog") / f"img_{i:06d}.png").parent.mkdir(exist_ok=True)
        (root / "images" / ("cat" if i % 2 else "dog") / f"img_{i:06d}.png").write_bytes(b"x" * 100)
    return root


def check_as_flow_runs(root: Path, home: Path, runs: int) -> dict:
    params = load_params(root / "params.yaml", FlowParams)

    @flow(name="watch-data", flow_run_name="watch-data")
    def watch_data_run() -> str:
        return check_data(root, params)

    watch_data_run()  # the baseline, and the flow's row
    before = database_bytes(home)
    for _ in range(runs):
        watch_data_run()
    per_run = (database_bytes(home) - before) / runs
    # A worker starts a Python process per run: import Prefect and the flow, run it, report.
    script = ("import sys; sys.path.insert(0, %r); from pathlib import Path; from prefect import flow; "
              "from flows.settings import FlowParams; from flows.watch_data import check_data; "
              "from tasks.common.config import load_params; p = load_params(Path(%r) / 'params.yaml', FlowParams); "
              "flow(name='watch-data')(lambda: check_data(Path(%r), p))()") % (str(ROOT), str(root), str(root))
    cpu = []
    for _ in range(3):
        used = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run([sys.executable, "-c", script], check=True, capture_output=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(after.ru_utime + after.ru_stime - used.ru_utime - used.ru_stime)
    return {"case": "check as a flow run", "database_bytes_per_run": round(per_run),
            "database_mb_per_day_at_one_per_minute": round(per_run * 1440 / 1e6, 1),
            "process_cpu_s_per_run": round(float(np.median(cpu)), 2),
            "cpu_minutes_per_day_at_one_per_minute": round(float(np.median(cpu)) * 1440 / 60, 1)}


def check_by_watcher(root: Path, api_url: str, seconds: float = 60) -> dict:
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw["ops"]["data_check_seconds"] = 1
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    env = {**os.environ, "PREFECT_API_URL": api_url, "PYTHONPATH": str(ROOT)}
    watcher = subprocess.Popen([sys.executable, "-m", "flows.watch_data"], cwd=root, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    watcher.stdout.readline()  # its first check is done
    started = _cpu_seconds(watcher.pid)
    time.sleep(seconds)
    idle_cpu = _cpu_seconds(watcher.pid) - started
    began = time.perf_counter()
    (root / "images" / "dog" / "new.png").write_bytes(b"y")
    line = watcher.stdout.readline()
    noticed = time.perf_counter() - began
    watcher.terminate()
    watcher.wait(30)
    files = sum(1 for _ in (root / "images").rglob("*.png"))
    return {"case": "check by the watcher", "files": files, "poll_seconds": 1,
            "cpu_ms_per_poll": round(idle_cpu / seconds * 1000, 2), "flow_runs": 0, "database_bytes": 0,
            "change_noticed_s": round(noticed, 1), "said": line.strip()[:80]}


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def log_day(traffic: Path, day: datetime, per_hour: int, rng: np.random.Generator) -> None:
    """A day of logged traffic as bentoml.monitor leaves it: one rotated file, last written at day's end."""
    frame = features(per_hour * 24, rng)
    stamps = [day + timedelta(seconds=float(s)) for s in np.sort(rng.uniform(0, 86400, len(frame)))]
    path = traffic / "image_classifier" / "data" / f"data.0.log.{day:%Y-%m-%d_%H-%M-%S}"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as out:
        for row, stamp in zip(frame.to_dict("records"), stamps):
            out.write(json.dumps({**row, "timestamp": stamp.replace(tzinfo=None).isoformat(), "request_id": "r"}) + "\n")
    last = (day + timedelta(days=1)).timestamp()
    os.utime(path, (last, last))


def month(root: Path, home: Path, days: int, per_hour: int) -> list[dict]:
    params = load_params(root / "params.yaml", FlowParams)
    ops_home, traffic = root / params.ops.home, root / params.monitor.traffic_dir
    rng = np.random.default_rng(0)
    reference = features(525, rng)
    open_project(ops_home / "evidently")

    @flow(name="monitor", flow_run_name="monitor-window")
    def monitor_window(end: datetime) -> dict:
        snapshot = drift_snapshot(reference, features(per_hour, rng), params.monitor, timestamp=end)
        summary = summarize_drift(snapshot.dict())
        folder = report_dir(ops_home, end)
        folder.mkdir(parents=True)
        (folder / "drift.json").write_text(json.dumps(summary, indent=2))
        if summary["dataset_drift"]:  # as the monitor does: the 4.5 MB self-contained report only then
            snapshot.save_html(str(folder / "drift.html"))
        shown_at = add_window(ops_home / "evidently", snapshot)
        window = {"start": (end - timedelta(hours=1)).isoformat(), "end": end.isoformat(), "images": per_hour,
                  "status": "drift" if summary["dataset_drift"] else "no drift", "verdict": summary.get("verdict"),
                  "dashboard": f"http://127.0.0.1:8000{shown_at}"}
        record_window(ops_home, window)
        publish_window(window)
        return window

    end = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
    first = end - timedelta(days=days)
    began = time.perf_counter()
    for day in range(days):
        log_day(traffic, first + timedelta(days=day), per_hour, rng)
        for hour in range(24):
            monitor_window(first + timedelta(days=day, hours=hour + 1))
    seconds = time.perf_counter() - began

    def sizes(case: str) -> dict:
        return {"case": case, "days": days, "windows": days * 24, "images_per_hour": per_hour,
                "prefect_db_mb": round(database_bytes(ops_home) / 1e6, 1),
                "window_reports_mb": round(size(ops_home / "monitor") / 1e6, 1),
                "evidently_mb": round(size(ops_home / "evidently") / 1e6, 1),
                "ops_home_mb": round(size(ops_home) / 1e6, 1),
                "traffic_logs_mb": round(size(traffic) / 1e6, 1)}

    report = [{**sizes("a month, nothing pruned"), "simulated_in_s": round(seconds)}]
    began = time.perf_counter()
    removed = housekeeping(repo_dir=str(root), as_of=end + timedelta(minutes=5))
    report.append({**sizes("after housekeeping as of the month's end"), "removed": removed,
                   "housekeeping_s": round(time.perf_counter() - began, 1),
                   "retention": params.ops.retention.model_dump()})
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python benchmarks/ops_bookkeeping.py", description=__doc__.split("\n")[0])
    parser.add_argument("--days", type=int, default=30, help="days of hourly monitor windows to simulate")
    parser.add_argument("--per-hour", type=int, default=100, help="logged images per hourly window")
    parser.add_argument("--images", type=int, default=10_000, help="files under data.root for the check")
    parser.add_argument("--flow-runs", type=int, default=200, help="checks run as flow runs to measure their cost")
    args = parser.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="ops-bookkeeping-"))
    try:
        root = scratch_project(base, args.images)
        home = root / ".ops"  # the stack's own layout: Prefect's database under ops.home
        (home / "prefect").mkdir(parents=True)
        port = _free_port()
        api_url = f"http://127.0.0.1:{port}/api"
        server = start("prefect-server", [str(Path(sys.executable).parent / "prefect"), "server", "start",
                                          "--host", "127.0.0.1", "--port", str(port)],
                       environment(home, api_url), base)
        try:
            wait_for_api(api_url, 120, server, base / "prefect-server.log")
            with temporary_settings(updates={PREFECT_API_URL: api_url}):
                print(json.dumps(check_as_flow_runs(root, home, args.flow_runs)), flush=True)
                print(json.dumps(check_by_watcher(root, api_url)), flush=True)
                shutil.rmtree(home / "data", ignore_errors=True)
                for line in month(root, home, args.days, args.per_hour):
                    print(json.dumps(line), flush=True)
        except Exception:
            print((base / "prefect-server.log").read_text()[-2000:], file=sys.stderr)
            raise
        finally:
            stop(server)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


if __name__ == "__main__":
    main()
