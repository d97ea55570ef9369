"""The housekeeping deployment's flow: what the operations stack keeps stays bounded.

Runs on ops.retention.cron (daily) and on demand. Each part is a task, so the run's page says what
each removed, and a failing part (a disk error, the DVC lock held) fails its task, and the run, while
the others still run:
    flow runs      ended over ops.retention.flow_run_days ago, except retrains and their pipeline
                   runs (every model's lineage); their logs go with them, their artifacts with
                   Prefect's orphan vacuum, and Prefect drops events after 7 days by itself
    traffic logs   rotated log files last written over ops.retention.traffic_days ago, and never
                   one the next monitor window still has to read
    windows        all but the newest ops.retention.windows monitor windows: history line, report
                   folder and Evidently snapshot
    deploy/store   archived Bentos of neither production nor the last ops.retention.promotions
                   models before it; the folder is then `dvc add`-ed again
`as_of` judges ages from another time than now (a simulated month, a test).
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterEndTime,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.client.schemas.sorting import FlowRunSort, FlowSort
from prefect.states import Failed

from flows.pipeline import FLOW_NAME as PIPELINE
from flows.retrain import FLOW_NAME as RETRAIN
from flows.settings import FlowParams
from tasks.common.config import UserError, load_params
from tasks.common.paths import POINTER, STORE_ARCHIVES
from tasks.model.registry import prune_archives, read_pointer
from tasks.monitoring.traffic import prune_traffic
from tasks.monitoring.windows import next_window, prune_windows, snapshot_id
from tasks.monitoring.workspace import remove_windows
from tasks.production import track_archives

KEPT_FLOWS = [RETRAIN, PIPELINE]  # the lineage of every model: kept as long as the database
FINAL = [StateType.COMPLETED, StateType.FAILED, StateType.CANCELLED, StateType.CRASHED]


@task
def prune_flow_runs(before: datetime) -> int:
    """Delete finished flow runs that ended before `before`, except retrains and their pipelines."""
    deleted = 0
    with get_client(sync_client=True) as client:
        pruned = [f.name for f in client.read_flows(limit=200, offset=0, sort=FlowSort.NAME_ASC)
                  if f.name not in KEPT_FLOWS]
        while pruned:
            runs = client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=pruned)),
                flow_run_filter=FlowRunFilter(end_time=FlowRunFilterEndTime(before_=before),
                                              state=FlowRunFilterState(type=FlowRunFilterStateType(any_=FINAL))),
                sort=FlowRunSort.END_TIME_DESC, limit=200, offset=0)
            for run in runs:
                client.delete_flow_run(run.id)
            deleted += len(runs)
            if len(runs) < 200:
                break
    return deleted


@task
def prune_traffic_logs(params: FlowParams, root: Path, now: datetime) -> int:
    """Rotated traffic logs older than ops.retention.traffic_days and than the next window's start."""
    ops_home = root / params.ops.home
    needed_since, _ = next_window(ops_home, now, params.ops.monitor.window_minutes)
    if needed_since is None:  # no window judged yet: the first one reads everything logged
        return 0
    before = min(now - timedelta(days=params.ops.retention.traffic_days), needed_since)
    return len(prune_traffic(root / params.monitor.traffic_dir, before))


@task
def prune_monitor_windows(params: FlowParams, root: Path) -> int:
    ops_home = root / params.ops.home
    removed = prune_windows(ops_home, params.ops.retention.windows)
    remove_windows(ops_home / "evidently", [sid for window in removed if (sid := snapshot_id(window))])
    return len(removed)


@task
def prune_bento_archives(params: FlowParams, root: Path) -> int:
    removed = prune_archives(read_pointer(root / POINTER), params.ops.retention.promotions, root / STORE_ARCHIVES)
    if removed:
        track_archives(root)
    return len(removed)


@flow(name="housekeeping", flow_run_name="housekeeping")
def housekeeping(repo_dir: str = ".", as_of: datetime | None = None) -> dict:
    """Prune flow runs, traffic logs, monitor windows and archived Bentos to what ops.retention keeps."""
    root, logger = Path(repo_dir).resolve(), get_run_logger()
    try:
        params = load_params(root / "params.yaml", FlowParams)
    except UserError as err:
        return Failed(message=str(err))
    now, keep = as_of or datetime.now(timezone.utc), params.ops.retention
    states = {
        "flow runs": prune_flow_runs(now - timedelta(days=keep.flow_run_days), return_state=True),
        "traffic logs": prune_traffic_logs(params, root, now, return_state=True),
        "monitor windows": prune_monitor_windows(params, root, return_state=True),
        "archived Bentos": prune_bento_archives(params, root, return_state=True),
    }
    removed = {name: state.result() for name, state in states.items() if state.is_completed()}
    failed = {name: state.message for name, state in states.items() if not state.is_completed()}
    logger.info("removed %s", ", ".join(f"{count} {name}" for name, count in removed.items()))
    if failed:
        return Failed(message="; ".join(f"{name}: {message}" for name, message in failed.items()))
    return removed
