"""The retrain deployment's flow: the whole pipeline, then promotion if the gate passes.

It runs on a schedule, on demand (UI or `prefect deployment run retrain/retrain`), and when a
drift or new-data event arrives (flows/deployments.py). Whatever started it is its `trigger`
parameter, shown in the run's name, recorded in the model's lineage and in the `retrain-lineage`
artifact. A retrain that starts within ops.retrain.cooldown_minutes of the start of the last
completed one is skipped with the reason in its log; so is a drift- or live-accuracy-triggered retrain while data.root
is still what production was trained on (it could only reproduce that model): people must first
label what drifted (flows/review.py), and the new-data trigger then retrains. The gate, as always,
decides whether the new model replaces production.
"""
from __future__ import annotations

import contextlib
import json
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

from dvc.repo import Repo
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterState,
    FlowRunFilterStateName,
)
from prefect.client.schemas.sorting import FlowRunSort
from prefect.runtime import flow_run
from prefect.states import Completed, Failed

from flows.pipeline import pipeline
from flows.review import studio_url
from flows.settings import FlowParams
from tasks.common.config import UserError, load_params
from tasks.common.paths import DECISION_JSON, PACKAGE_JSON, POINTER
from tasks.labels.review import waiting_for_review
from tasks.model.lineage import TRIGGER_ENV, UNKNOWN, collect_lineage
from tasks.model.registry import model_metadata, read_pointer

FLOW_NAME = "retrain"
SKIPPED = "Skipped"  # state name of a retrain skipped in the cooldown: it does not restart the cooldown


def last_completed_retrain() -> datetime | None:
    """Start time of the newest retrain that ran to completion (not this run, not a skipped one)."""
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[FLOW_NAME])),
            flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(not_any_=[flow_run.id]) if flow_run.id else None,
                state=FlowRunFilterState(name=FlowRunFilterStateName(any_=["Completed"])),
            ),
            sort=FlowRunSort.START_TIME_DESC, limit=1, offset=0,  # explicit: this server rejects nulls
        )
    return runs[0].start_time if runs and runs[0].start_time else None


def cooldown_reason(cooldown_minutes: int, now: datetime) -> str | None:
    """Why this retrain must be skipped, or None when the cooldown has passed."""
    last = last_completed_retrain() if cooldown_minutes > 0 else None
    if last is None or now - last >= timedelta(minutes=cooldown_minutes):
        return None
    ago = int((now - last).total_seconds() // 60)
    return (f"skipped: the last completed retrain started {ago} min ago, within the cooldown of "
            f"{cooldown_minutes} min (ops.retrain.cooldown_minutes)")


def trained_on_this_data(root: Path, params: FlowParams) -> str | None:
    """The production model's tag when data.root is still what it was trained on (the DVC hash in its
    lineage, and no change since dvc.lock recorded it), else None."""
    entry = read_pointer(root / POINTER)["current"]
    lineage = ((model_metadata(entry["model"]) or {}).get("lineage") or {}) if entry else {}
    trained = lineage.get("data_root_hash", UNKNOWN)
    if trained == UNKNOWN or lineage.get("data_root") != params.data.root:
        return None
    if collect_lineage(root, params)["data_root_hash"] != trained:
        return None
    with contextlib.chdir(root), Repo(str(root)) as repo:
        status = repo.status(targets=["validate"])
    changed = [change for item in status.get("validate", []) if isinstance(item, dict)
               for change in (item.get("changed deps") or {})]
    return None if params.data.root in changed else entry["model"]


def drift_without_new_labels(root: Path, params: FlowParams) -> str | None:
    """Why a drift-triggered retrain must wait for reviews, or None when data.root has changed."""
    model = trained_on_this_data(root, params)
    if model is None:
        return None
    return (f"skipped: data.root has not changed since production ({model}) was trained, so a retrain would "
            f"reproduce it; {waiting_for_review(root, params)} images wait for review in Label Studio "
            f"({studio_url(params)}); once reviews are applied, the new-data trigger retrains")


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def publish_lineage(root: Path, trigger: str, reason: str, outcome: str, packaged: bool = True) -> str:
    """The retrain-lineage artifact: what started the run, the data and code it trained on, the result.
    Without `packaged` (the pipeline stopped early) the files on disk describe an older model: left out."""
    package = read_json(root / PACKAGE_JSON) if packaged else {}
    decision = read_json(root / DECISION_JSON) if packaged else {}
    metadata = package.get("metadata", {})
    lineage = metadata.get("lineage", {})
    metrics = metadata.get("metrics", {})
    rows = [
        ("trigger", trigger), ("reason", reason or "-"), ("outcome", outcome),
        ("model", package.get("model_tag", "-")), ("bento", package.get("bento_tag", "-")),
        *((key, lineage[key]) for key in lineage),
        *((f"test {name}", round(metrics[name], 4)) for name in ("accuracy", "macro_f1") if name in metrics),
        ("gate", decision.get("verdict", "-")),
    ]
    table = "\n".join(f"| {key} | {value} |" for key, value in rows)
    create_markdown_artifact(key="retrain-lineage", markdown=f"### Retrain ({trigger})\n\n| | |\n|---|---|\n{table}\n",
                             description=f"retrain by {trigger}: {outcome}")
    return outcome


@flow(name=FLOW_NAME, flow_run_name="retrain-by-{trigger}")
def retrain(trigger: str = "manual", reason: str = "", repo_dir: str = "."):
    """Run the pipeline and promote what the gate passes, unless the last retrain was too recent."""
    root, logger = Path(repo_dir).resolve(), get_run_logger()
    try:
        params = load_params(root / "params.yaml", FlowParams)
    except UserError as err:
        return Failed(message=str(err))
    logger.info("retrain triggered by %s%s", trigger, f": {reason}" if reason else "")
    skip = cooldown_reason(params.ops.retrain.cooldown_minutes, datetime.now(timezone.utc))
    if not skip and trigger in ("drift", "live accuracy"):
        skip = drift_without_new_labels(root, params)
    if skip:
        logger.info(skip)
        return Completed(name=SKIPPED, message=skip)

    os.environ[TRIGGER_ENV] = trigger  # the package stage writes it into the model's lineage
    try:
        state = pipeline(repo_dir=str(root), return_state=True)
    finally:
        os.environ.pop(TRIGGER_ENV, None)
    if state.is_failed():
        publish_lineage(root, trigger, reason, f"failed: {state.message}", packaged=False)
        return Failed(message=state.message)
    summary = state.result()
    publish_lineage(root, trigger, reason, summary.get("promote", "not promoted"))
    logger.info("retrain by %s done: %s", trigger, summary.get("promote", "not promoted"))
    return summary
