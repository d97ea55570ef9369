"""Human review in Label Studio, and the review deployment's flow.

    python -m flows.review serve    Label Studio on ops.host:ops.label_studio_port until Ctrl-C (`make review`;
                                    `make ops` starts it too): its own environment, made on first use; its
                                    SQLite database, credentials and log under <ops.home>/label-studio
    python -m flows.review sync     what the review deployment runs (schedule ops.review.cron, or on demand):
                                    new suspect labels and uncertain served images become tasks, then finished
                                    reviews change data.root (tasks/labels/review.py), which is `dvc add`-ed,
                                    so the data watcher's new-data event starts a retrain; then accuracy on
                                    reviewed live traffic (tasks/monitoring/live_accuracy.py): a table
                                    artifact, the Evidently workspace's live-accuracy project, and an
                                    imgclf.accuracy.low event when production's audited accuracy is
                                    significantly below its test accuracy (ops.retrain.on_accuracy)

Label Studio listens on loopback unless ops.host says otherwise; its admin login and API token come
from LABEL_STUDIO_USERNAME / _PASSWORD / _API_KEY, else from <ops.home>/label-studio/credentials.json
(created with random secrets, readable by its owner only). Images are served from the project folder.
"""
from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.states import Failed

from flows.events import announce_low_accuracy
from flows.settings import FlowParams
from tasks.common.config import UserError, load_params
from tasks.common.paths import POINTER
from tasks.data.layout import class_folders
from tasks.labels.review import apply_reviews, served_items, suspect_items, uncertain_items
from tasks.labels.studio import credentials, running
from tasks.labels.studio_client import LabelStudio
from tasks.model.registry import read_pointer
from tasks.monitoring.live_accuracy import (
    accuracy_table,
    below_test_accuracy,
    load_answers,
    model_accuracy,
    unjoined_notice,
)
from tasks.monitoring.live_workspace import record_live_accuracy

FLOW_NAME = "review-sync"


def studio_home(root: Path, params: FlowParams) -> Path:
    return root / params.ops.home / "label-studio"


def studio_url(params: FlowParams) -> str:
    host = "127.0.0.1" if params.ops.host in ("0.0.0.0", "::") else params.ops.host
    return f"http://{host}:{params.ops.label_studio_port}"


def review_classes(root: Path, params: FlowParams) -> list[str]:
    data_root = root / params.data.root
    if not data_root.is_dir():
        raise UserError(f"data.root {data_root} is not a folder; point data.root in params.yaml at your images")
    return class_folders(data_root)


def connect(root: Path, params: FlowParams) -> tuple[LabelStudio, int, list[str]]:
    """A client of the project's Label Studio and the id of its review project (made on first use)."""
    classes = review_classes(root, params)
    client = LabelStudio(studio_url(params), credentials(studio_home(root, params)).api_key, root)
    return client, client.ensure_project(f"{params.package.model_name} review", classes), classes


def send_for_review(root: Path, params: FlowParams, since: datetime | None = None, limit: int | None = None) -> int:
    """The uncertain served images kept since `since` (at most `limit`, least sure first) as new tasks;
    returns how many were added. Tasks already there are not repeated."""
    items = uncertain_items(root, params, since, limit)
    if not items:
        return 0
    client, project, _ = connect(root, params)
    with client:
        return client.sync_tasks(project, items)


@flow(name=FLOW_NAME, flow_run_name="review-sync")
def review_sync(repo_dir: str = ".") -> dict:
    """Send new review tasks, then apply the finished reviews to data.root (and `dvc add` it)."""
    root, logger = Path(repo_dir).resolve(), get_run_logger()
    try:
        params = load_params(root / "params.yaml", FlowParams)
        items = suspect_items(root, params) + served_items(root, params)
        client, project, classes = connect(root, params)
        with client:
            added = client.sync_tasks(project, items)
            reviews = client.finished_reviews(project)
        applied = apply_reviews(root, params, reviews, classes)
    except UserError as err:
        logger.error("review: %s", err)
        return Failed(message=str(err))
    counts = applied["action"].value_counts().to_dict() if len(applied) else {}
    for row in applied[applied["action"] == "skipped"].itertuples():
        logger.warning("review of %s skipped: %s", row.file, row.note)
    summary = {"tasks_added": added, "reviews_applied": int(len(applied)), **{k: int(v) for k, v in counts.items()}}
    logger.info("review: %s", summary)
    summary["live_accuracy"] = check_live_accuracy(root, params)
    return summary


def check_live_accuracy(root: Path, params: FlowParams) -> dict | None:
    """Accuracy on reviewed live traffic as an artifact and in the Evidently workspace; a retrain event
    when production's audited accuracy is significantly below its test accuracy. Returns the test."""
    logger = get_run_logger()
    answers, unjoined = load_answers(root, params)
    notice = unjoined_notice(unjoined)
    if notice:
        logger.warning("review: %s", notice)
    table = accuracy_table(answers)
    if len(table):
        create_table_artifact(key="live-accuracy", table=table.to_dict("records"),
                              description="Accuracy on reviewed served images, per model, day served and kind: "
                                          "audit is live accuracy; uncertain (least sure) is biased low by design")
        record_live_accuracy(root / params.ops.home / "evidently", answers)
    production = read_pointer(root / POINTER)["current"]
    if production is None or not isinstance(production.get("test_accuracy"), (int, float)):
        return None
    audited = model_accuracy(answers, production["model"])
    test = below_test_accuracy(audited, production["test_accuracy"], params.monitor.alpha,
                               params.ops.retrain.min_audited)
    logger.info("live accuracy of %s: %s", production["model"], test["reason"])
    if test["alarm"] and params.ops.retrain.on_accuracy:
        announce_low_accuracy(production["model"], test)
    return {"model": production["model"], **audited, **test}


def serve(root: Path) -> None:
    """Label Studio in the foreground until Ctrl-C."""
    params = load_params(root / "params.yaml", FlowParams)
    home = studio_home(root, params)
    with running(home, root, params.ops.host, params.ops.label_studio_port) as server:
        creds = credentials(home)
        print(f"Label Studio: {server.url} (log in as {creds.username}; password and API token in "
              f"{home / 'credentials.json'} unless set in LABEL_STUDIO_PASSWORD / LABEL_STUDIO_API_KEY); Ctrl-C stops it",
              flush=True)
        try:
            server.process.wait()
        except KeyboardInterrupt:
            pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.review", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands", required=True)
    commands.add_parser("serve", help="Label Studio on ops.host:ops.label_studio_port until Ctrl-C (make review)")
    commands.add_parser("sync", help="what the review deployment runs: new review tasks in, finished reviews "
                                     "applied to data.root (and dvc add-ed)")
    args = parser.parse_args(argv)
    try:
        if args.command == "serve":
            serve(Path("."))
        else:  # sync
            state = review_sync(return_state=True)
            if state.is_failed():
                raise UserError(state.message)
            print(state.result())
    except UserError as err:
        print(f"review: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
