"""The Prefect events that start a retrain, and the functions that emit them.

    imgclf.drift.detected   a monitor window showed dataset drift (payload: the drift summary)
    imgclf.data.changed     images under data.root were added, removed, modified or relabelled
    imgclf.accuracy.low     audited live accuracy is significantly below production's test accuracy

The retrain deployment's triggers (flows/deployments.py) listen for these; Prefect's automations,
not this project, decide when a run starts, so the UI shows every event and what it caused.
"""
from __future__ import annotations

from prefect.events import emit_event

DRIFT_EVENT = "imgclf.drift.detected"
DATA_EVENT = "imgclf.data.changed"
ACCURACY_EVENT = "imgclf.accuracy.low"
RESOURCE_PREFIX = "imgclf."


def announce_drift(window: dict) -> None:
    """Tell Prefect that a traffic window drifted; `summary` is what the retrain run will show."""
    summary = f"the window {window.get('start') or 'start'} .. {window['end']}: {window.get('verdict')}"
    emit_event(
        event=DRIFT_EVENT,
        resource={"prefect.resource.id": f"{RESOURCE_PREFIX}traffic", "prefect.resource.name": "service traffic"},
        payload={"summary": summary, **{k: v for k, v in window.items() if k != "columns"}},
    )


def announce_data_change(root: str, changes: dict[str, list[str]], description: str) -> None:
    """Tell Prefect that the labelled data under data.root changed."""
    emit_event(
        event=DATA_EVENT,
        resource={"prefect.resource.id": f"{RESOURCE_PREFIX}data", "prefect.resource.name": root},
        payload={"summary": f"data.root {root} changed: {description}",
                 **{kind: files[:20] for kind, files in changes.items()}},  # a sample, not 100k paths
    )


def announce_low_accuracy(model: str, test: dict) -> None:
    """Tell Prefect that reviewers found production wrong more often than its test accuracy allows."""
    emit_event(
        event=ACCURACY_EVENT,
        resource={"prefect.resource.id": f"{RESOURCE_PREFIX}accuracy", "prefect.resource.name": model},
        payload={"summary": f"{model}: {test['reason']}", "model": model, "p_value": test["p_value"]},
    )
