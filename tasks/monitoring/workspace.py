"""Drift over time: each monitored window becomes a snapshot of one project in a local Evidently workspace.

`evidently ui --workspace <dir>` then shows the project's dashboard (one point per window) at
/projects/<project id> and each window's full drift report at /projects/<project id>/reports/<snapshot id>.
The dashboard is stored in the workspace, so the UI needs nothing from this package to draw it.
"""
from __future__ import annotations

import fcntl
from contextlib import contextmanager
from pathlib import Path

from evidently import Run
from evidently.sdk.models import DashboardModel, DashboardPanelPlot, DashboardTabModel, PanelMetric
from evidently.sdk.panels import bar_plot_panel, counter_panel, line_plot_panel
from evidently.ui.storage.local.base import LocalState
from evidently.ui.workspace import Project, Workspace

from tasks.monitoring.features import EMBEDDING_COLUMNS, STAT_COLUMNS

PROJECT_NAME = "image-classifier drift"
PROJECT_DESCRIPTION = "The service's logged traffic against the validation images: one snapshot per window."
TAB = "Drift over time"


class _Workspace(Workspace):
    """Evidently's local Workspace without the dataset, artifact and tracing services it starts.

    Starting them parses every stored snapshot (about 0.1 s per window), so each new window would
    take longer than the last; projects, dashboards and runs need only the workspace's files.
    """

    def __init__(self, path: str):
        self.path = path
        self.state = LocalState(path)


def _flags(columns: list[str]) -> list[PanelMetric]:
    """One series per column; the UI cycles six colours, so each panel shows one group of columns."""
    return [PanelMetric(metric="ColumnDriftFlags", metric_labels={"label": c}, legend=c) for c in columns]


def dashboard_panels() -> list[DashboardPanelPlot]:
    """The dashboard: one point per window, each read from a metric that `drift_snapshot` computes.

    A panel selects values by metric type and `metric_labels`, which must equal (as strings) stored
    parameters of the value: `value_type` picks count or share, `column` the metric's column, `label`
    one label of a per-label metric. A legend may quote any parameter as `{{name}}`.
    """
    count = PanelMetric(metric="DriftedColumnsCount", metric_labels={"value_type": "count"}, legend="drifted columns")
    share = PanelMetric(metric="DriftedColumnsCount", metric_labels={"value_type": "share"}, legend="drifted share")
    confidence = PanelMetric(metric="MeanValue", metric_labels={"column": "confidence"}, legend="mean confidence")
    mix = PanelMetric(metric="UniqueValueCount", metric_labels={"column": "prediction", "value_type": "share"},
                      legend="{{label}}")
    stacked = "Drift detected = 1; stacked, so the height is the number of columns."
    return [
        counter_panel("Latest window", [count, share, confidence]),
        line_plot_panel("Column tests that fired", [count], size="half",
                        description="monitor.detector bonferroni: one test that fires (a p-value below "
                                    "monitor.alpha / columns) makes the window drifted; share: monitor.drift_share "
                                    "of the columns must. The bars below say which tests fired; each window's "
                                    "report, their statistics and thresholds."),
        line_plot_panel("Mean confidence", [confidence], size="half",
                        description="A falling confidence is often the first sign of unfamiliar inputs."),
        bar_plot_panel("Drifted image statistics", _flags(STAT_COLUMNS), size="half", stacked=True,
                       description=stacked),
        bar_plot_panel("Drifted model outputs", _flags(["confidence", "prediction"]), size="half", stacked=True,
                       description=stacked),
        bar_plot_panel("Drifted embedding dimensions", _flags(EMBEDDING_COLUMNS), stacked=True, description=stacked),
        bar_plot_panel("Prediction mix", [mix], stacked=True, description="Share of each predicted label."),
    ]


@contextmanager
def _locked(workspace_dir: Path):
    """Serialise find-or-create, so that two monitor runs starting together make one project, not two."""
    workspace_dir.mkdir(parents=True, exist_ok=True)
    with open(workspace_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _project(workspace: Workspace, name: str = PROJECT_NAME, description: str = PROJECT_DESCRIPTION,
             panels: list[DashboardPanelPlot] | None = None, tab: str = TAB) -> Project:
    """A project (the drift project by default), created the first time; its dashboard (one tab of `panels`,
    default the drift dashboard's) rewritten whenever the code's differs."""
    found = workspace.search_project(name)
    project = found[0] if found else workspace.create_project(name, description=description)
    panels = dashboard_panels() if panels is None else panels
    stored = workspace.get_dashboard(project.id)
    if [p.dict(exclude={"id"}) for p in stored.panels] != [p.dict(exclude={"id"}) for p in panels]:
        board = DashboardTabModel(title=tab, panels=[p.id for p in panels])
        workspace.save_dashboard(project.id, DashboardModel(tabs=[board], panels=panels))
    return project


def open_project(workspace_dir: Path) -> Project:
    """The drift project of the workspace at workspace_dir; workspace, project and dashboard made on first use."""
    with _locked(workspace_dir):
        return _project(_Workspace(str(workspace_dir)))


def add_window(workspace_dir: Path, snapshot: Run, name: str | None = None) -> str:
    """Store one window's drift snapshot in the project; return where the UI shows it, for a log line.

    The snapshot's own timestamp (the window's end, given to `drift_snapshot`) places it on the
    dashboard's time axis. The returned path is /projects/<project id>/reports/<snapshot id>.
    """
    with _locked(workspace_dir):
        workspace = _Workspace(str(workspace_dir))
        project = _project(workspace)
        before = set(workspace.list_runs(project.id))
        try:
            ref = workspace.add_run(project.id, snapshot, name=name)
        except OSError:  # a full disk: a half-written snapshot would break the dashboard
            for sid in set(workspace.list_runs(project.id)) - before:
                workspace.delete_run(project.id, sid)
            raise
    return f"/projects/{project.id}/reports/{ref.id}"


def remove_windows(workspace_dir: Path, snapshot_ids: list[str]) -> int:
    """Delete these windows' snapshots from the drift project (housekeeping); returns how many were there."""
    if not snapshot_ids or not workspace_dir.is_dir():
        return 0
    with _locked(workspace_dir):
        workspace = _Workspace(str(workspace_dir))
        project = _project(workspace)
        stored = {str(sid) for sid in workspace.list_runs(project.id)}
        gone = [sid for sid in snapshot_ids if sid in stored]
        for sid in gone:
            workspace.delete_run(project.id, sid)
    return len(gone)
