"""Accuracy on live traffic in the Evidently workspace: one project, one snapshot per day served and model.

Each snapshot is an Evidently classification report (Accuracy, RowCount) over the reviewed images
that one model served on one day, dated that day, so that the dashboard's time axis is when the
images were served, not when a reviewer got to them. The audit sample (an unbiased share of traffic)
and the least-sure images are separate snapshots, tagged with their kind, and separate series:
the least-sure accuracy is lower by construction and never mixed into the audited one. (One report with
Evidently's GroupBy by kind would not do: its classification metrics read the whole dataset, not the group.)
"""
from __future__ import annotations

import uuid
import warnings
from contextlib import suppress
from datetime import datetime
from pathlib import Path

import pandas as pd
from evidently import BinaryClassification, DataDefinition, Dataset, MulticlassClassification, Report, Run
from evidently.metrics import Accuracy, RowCount
from evidently.sdk.models import DashboardPanelPlot, PanelMetric
from evidently.sdk.panels import bar_plot_panel, counter_panel, line_plot_panel

from tasks.monitoring.workspace import _locked, _project, _Workspace

PROJECT_NAME = "image-classifier live accuracy"
PROJECT_DESCRIPTION = ("Accuracy of the production model on the audit sample of served images, labelled by reviewers: "
                       "one snapshot per day served and model version.")
TAB = "Accuracy on live traffic"
SUFFIX = {"audit": "", "uncertain": " least sure"}  # the kinds recorded, and how their snapshot names end


def dashboard_panels() -> list[DashboardPanelPlot]:
    """The dashboard: one point per day served (two on a day two models served), each read from a snapshot's
    metrics; the snapshot's tag (its kind) keeps the audited and least-sure series apart."""
    audited = PanelMetric(metric="Accuracy", tags=["audit"], legend="audited accuracy")
    images = PanelMetric(metric="RowCount", tags=["audit"], legend="audited images")
    least_sure = PanelMetric(metric="Accuracy", tags=["uncertain"], legend="least-sure accuracy")
    return [
        counter_panel("Latest audited day", [audited, images]),
        line_plot_panel("Audited live accuracy", [audited], size="half",
                        description="Share of the audit sample (a random share of all traffic) the model got "
                                    "right, by the day the images were served."),
        line_plot_panel("Least-sure accuracy", [least_sure], size="half",
                        description="The images the service was least sure of: lower by construction, so never "
                                    "mixed into the audited accuracy."),
        bar_plot_panel("Audited images per day", [images],
                       description="Reviewed audit images per day served: few images, a wide interval."),
    ]


def accuracy_snapshot(rows: pd.DataFrame, day: datetime, model: str, kind: str) -> Run:
    """Evidently's Accuracy and RowCount over one day's reviewed images of one kind, dated `day`.

    Evidently treats any two labels (target and prediction together) as a binary task and then looks
    for the positive label 1, so a day whose sample has two labels names one; accuracy does not depend on it.
    """
    labels = sorted(set(rows["label"]) | set(rows["prediction"]))
    task = (BinaryClassification(target="label", prediction_labels="prediction", pos_label=labels[0])
            if len(labels) == 2 else MulticlassClassification(target="label", prediction_labels="prediction"))
    definition = DataDefinition(classification=[task], categorical_columns=["label", "prediction"])
    with warnings.catch_warnings():
        # scikit-learn warns about precision on a sample that lacks a class; only accuracy is read.
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        return Report([Accuracy(), RowCount()]).run(
            Dataset.from_pandas(rows[["label", "prediction"]].reset_index(drop=True), data_definition=definition),
            None, timestamp=day, tags=[kind], metadata={"model_version": model, "kind": kind,
                                                        "served": f"{day:%Y-%m-%d}"})


def record_live_accuracy(workspace_dir: Path, answers: pd.DataFrame) -> list[str]:
    """Store one snapshot per (day served, model version, kind) of `answers` (`reviewed_answers`); return
    where the UI shows each, /projects/<project id>/reports/<snapshot id>.

    A snapshot is dated midnight UTC of the day served: the day's last served time would move as later
    reviews arrive, and midnight puts every model's and kind's point for one day at the same place.
    Recording a day again (more reviews arrived) replaces its snapshot: the id is derived from the name,
    "<model> served <YYYY-MM-DD>" (" least sure" appended for the least-sure images), so the old run is
    found without parsing every stored snapshot, and rewritten in place (a running UI reloads it).
    Days absent from `answers` are left as they are.
    """
    rows = answers[answers["kind"].isin(SUFFIX)]
    days = rows["served_at"].dt.tz_convert("UTC").dt.tz_localize(None).dt.normalize()
    snapshots = [(f"{model} served {day:%Y-%m-%d}{SUFFIX[kind]}",
                  accuracy_snapshot(group, day.to_pydatetime(), model, kind))
                 for (day, model, kind), group in rows.groupby([days, "model_version", "kind"], sort=True)]
    paths = []
    with _locked(workspace_dir):
        workspace = _Workspace(str(workspace_dir))
        project = _project(workspace, PROJECT_NAME, PROJECT_DESCRIPTION, dashboard_panels(), TAB)
        for name, snapshot in snapshots:
            snapshot_id = uuid.uuid5(project.id, name)
            snapshot.set_name(name)
            try:
                workspace.state.write_snapshot(project.id, snapshot_id, snapshot.to_snapshot_model())
            except OSError:  # a full disk: a half-written snapshot would break the dashboard
                with suppress(OSError):
                    workspace.delete_run(project.id, snapshot_id)
                raise
            paths.append(f"/projects/{project.id}/reports/{snapshot_id}")
    return paths
