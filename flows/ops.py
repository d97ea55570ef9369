"""The operations stack on one machine: `python -m flows.ops` (or `make ops`).

Starts, in this order, and stops in reverse on Ctrl-C:
    Prefect server     UI and API on ops.host:ops.prefect_port; SQLite under ops.home
                       (or the database in PREFECT_API_DATABASE_CONNECTION_URL, e.g. PostgreSQL)
    deployments        retrain, monitor, review-sync, housekeeping on the process work pool
                       ops.work_pool (flows/deployments.py), created or updated on every start
    a worker           for that pool: it runs the deployments' flow runs as child processes
    the data watcher   emits the new-data event when images under data.root change (flows/watch_data.py)
    Evidently UI       the drift dashboard of <ops.home>/evidently on ops.evidently_port (on 127.0.0.1
                       whatever ops.host is: it has no login)
    Label Studio       where people review suspect labels and uncertain served images, on
                       ops.label_studio_port (flows/review.py; its own environment, made on first use)
    the service        the production model on ops.service_port, following each promotion and
                       rollback (`python -m tasks.production serve`); started once production has a model

A part that dies is started again (flows/supervise.py). Running the command again resumes from
ops.home: the same database, schedules, run history and windows.
`--api-url URL` uses a Prefect server that is already running (a team's, on PostgreSQL) instead of
starting one; `--no-worker` leaves the runs to workers on other machines. Logs of each process go
to <ops.home>/logs/. Beyond loopback the stack requires credentials (flows/credentials.py).
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import State, StateType
from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings
from prefect.states import Cancelled, Crashed
from sqlalchemy.engine import make_url

import tasks  # noqa: F401  (switches telemetry off for this process and the ones it starts)
from flows.credentials import AUTH_ENV, evidently_host, stack_secrets
from flows.deployments import HEARTBEAT_SECONDS, register
from flows.review import studio_home, studio_url
from flows.settings import FlowParams
from flows.supervise import Children
from tasks.common.config import UserError, load_params
from tasks.common.paths import POINTER
from tasks.labels.studio import credentials, ensure_environment, server_command, server_environment
from tasks.model.registry import read_pointer
from tasks.monitoring.workspace import open_project

BIN = Path(sys.executable).parent
STARTUP_SECONDS = 120  # a first start on an empty database migrates it: ~10 s on 2 cores
UNFINISHED = [StateType.RUNNING, StateType.PENDING, StateType.CANCELLING]
FLOWS = ["retrain", "monitor", "review-sync", "housekeeping", "image-classification-pipeline"]
KILLED = "the operations stack was killed while this ran"
STOPPED = "the operations stack was stopped while this ran"


def check_port_free(host: str, port: int, setting: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As the servers themselves bind: connections of a stack just stopped (TIME_WAIT) do not count.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            raise UserError(f"port {port} on {host} is in use ({setting}); stop what listens there "
                            f"or pick another port in params.yaml") from None


def environment(ops_home: Path, api_url: str) -> dict[str, str]:
    """What every process of the stack needs: Prefect's home and database under ops.home (unless the
    user chose a database), the API address, a worker that looks for runs every few seconds."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.setdefault("PREFECT_HOME", str(ops_home / "prefect"))
    env.setdefault("PREFECT_API_DATABASE_CONNECTION_URL", f"sqlite+aiosqlite:///{ops_home / 'prefect' / 'prefect.db'}")
    # Besides events (7 days), the server deletes the logs and artifacts of the flow runs that the
    # housekeeping deployment deleted (flows/housekeeping.py).
    env.setdefault("PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED", "events,orphans")
    env.update({"PREFECT_API_URL": api_url, "PREFECT_WORKER_QUERY_SECONDS": "5",
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                # flow runs send heartbeats, so a run whose process died is marked Crashed (flows/deployments.py)
                "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_SECONDS)})
    return env


def has_production(root: Path) -> bool:
    """Whether deploy/production.json names a model (an unreadable file counts as no)."""
    try:
        return read_pointer(root / POINTER)["current"] is not None
    except UserError:
        return False


def wait_for_api(api_url: str, seconds: float, server: subprocess.Popen | None = None, log: Path | None = None) -> None:
    """Until the API answers its health check; one clear line if it never does."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server is not None and server.poll() is not None:
            raise UserError(f"the Prefect server stopped while starting (exit {server.returncode}); see {log}")
        try:
            if httpx.get(f"{api_url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    where = f"; see {log}" if log else ""
    raise UserError(f"the Prefect server at {api_url} cannot be reached{where}; start it "
                    "(prefect server start) or fix --api-url")


def api_settings(api_url: str, auth: str | None):
    """This process's Prefect client settings for the stack's API (with its basic auth, if any)."""
    return temporary_settings(updates={PREFECT_API_URL: api_url, **({PREFECT_API_AUTH_STRING: auth} if auth else {})})


def settle_unfinished_runs(api_url: str, auth: str | None, state: State) -> int:
    """Runs of these deployments that no worker is running any more can never finish: give them a
    final state, which also frees their concurrency slot. Returns how many there were."""
    with api_settings(api_url, auth), get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=FLOWS)),  # the pipeline subflow too
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=UNFINISHED))),
            limit=200, offset=0, sort="START_TIME_DESC")
        for run in runs:
            client.set_flow_run_state(run.id, state.model_copy(), force=True)
    return len(runs)


def evidently_reach(kept_on_loopback: bool, port: int) -> str:
    """How to open the Evidently UI from another machine, when the stack is exposed and it is not."""
    return (f"; no login, so loopback only; from elsewhere: ssh -L {port}:127.0.0.1:{port} <this machine>"
            if kept_on_loopback else "")


def serve(params: FlowParams, root: Path, api_url: str | None, with_worker: bool) -> None:
    """Start the stack, wait until Ctrl-C (or until a part of it dies), stop it in reverse order."""
    ops = params.ops
    ops_home = (root / ops.home).resolve()
    logs = ops_home / "logs"
    own_server = api_url is None
    if own_server:
        check_port_free(ops.host, ops.prefect_port, "ops.prefect_port")
    secrets = stack_secrets(ops.host, own_server, os.environ)
    auth = secrets.get(AUTH_ENV)
    evidently = evidently_host(ops.host)
    check_port_free(evidently, ops.evidently_port, "ops.evidently_port")
    check_port_free(ops.host, ops.service_port, "ops.service_port")
    check_port_free(ops.host, ops.label_studio_port, "ops.label_studio_port")
    logs.mkdir(parents=True, exist_ok=True)
    api_url = api_url or f"http://{ops.host}:{ops.prefect_port}/api"
    env = {**environment(ops_home, api_url), **secrets}
    # Only a stack that owns both the server and the one worker may settle runs: on a shared
    # server, runs without a worker here may well be running on another machine.
    sole_runner = own_server and with_worker
    with ExitStack() as stack:
        children = Children(stack, logs)
        if own_server:
            Path(env["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
            database = make_url(env["PREFECT_API_DATABASE_CONNECTION_URL"]).render_as_string(hide_password=True)
            print(f"Prefect server starting (database: {database})", flush=True)
            server = children.start("prefect-server", [str(BIN / "prefect"), "server", "start", "--host", ops.host,
                                                       "--port", str(ops.prefect_port)], env)
            wait_for_api(api_url, STARTUP_SECONDS, server, logs / "prefect-server.log")
        else:
            wait_for_api(api_url, 10)
        if sole_runner and (crashed := settle_unfinished_runs(api_url, auth, Crashed(message=KILLED))):
            print(f"marked {crashed} run(s) left unfinished by a killed stack as crashed", flush=True)
        with api_settings(api_url, auth):
            register(params, root)
        if sole_runner:  # runs after the worker has stopped, before the server does
            stack.callback(settle_unfinished_runs, api_url, auth, Cancelled(message=STOPPED))
        if with_worker:
            children.start("worker", [str(BIN / "prefect"), "worker", "start", "--pool", ops.work_pool,
                                      "--type", "process"], env)
        children.start("data-watcher", [sys.executable, "-m", "flows.watch_data"], env)
        open_project(ops_home / "evidently")  # the dashboard exists before the first window
        children.start("evidently-ui", [str(BIN / "evidently"), "ui", "--workspace", str(ops_home / "evidently"),
                                        "--host", evidently, "--port", str(ops.evidently_port)], env)
        studio = studio_home(root, params)
        studio.mkdir(parents=True, exist_ok=True, mode=0o700)
        children.start("label-studio", server_command(ensure_environment(), ops.host, ops.label_studio_port),
                       server_environment(studio, root, credentials(studio)))
        print(f"Prefect UI     {api_url.removesuffix('/api')}  (deployments retrain, monitor, review-sync, housekeeping; "
              f"work pool {ops.work_pool})\n"
              f"Evidently UI   http://{evidently}:{ops.evidently_port}  (drift per monitor window"
              f"{evidently_reach(evidently != ops.host, ops.evidently_port)})\n"
              f"Label Studio   {studio_url(params)}  (reviews; login in {studio / 'credentials.json'})\n"
              f"Service        http://{ops.host}:{ops.service_port}  (the production model; "
              f"{'starting' if has_production(root) else 'starts once a model is promoted'})\n"
              f"logs           {logs}\n"
              f"run now        PREFECT_API_URL={api_url} prefect deployment run retrain/retrain\n"
              "Ctrl-C stops everything.", flush=True)
        while True:  # until Ctrl-C, or a part that keeps dying
            if "service" not in children.procs and has_production(root):  # the first promotion may come from a retrain
                children.start("service", [sys.executable, "-m", "tasks.production", "serve", "--host", ops.host,
                                           "--port", str(ops.service_port)], env)
            for line in children.restart_dead():
                print(line, flush=True)
            time.sleep(1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.ops", description=__doc__.split("\n")[0])
    parser.add_argument("--api-url", help="use this running Prefect server instead of starting one")
    parser.add_argument("--no-worker", action="store_true", help="start no worker: workers elsewhere run the flows")
    args = parser.parse_args(argv)
    root = Path.cwd()
    # Ctrl-C, and the SIGTERM of `kill`, systemd or a container runtime, stop the stack in order
    # (SIGINT too: a shell starts background jobs with it ignored).
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.default_int_handler)
    try:
        serve(load_params(root / "params.yaml", FlowParams), root, args.api_url, not args.no_worker)
    except UserError as err:
        print(f"ops: error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("stopped", flush=True)


if __name__ == "__main__":
    main()
