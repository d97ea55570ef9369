"""Drift windows stored in an Evidently workspace: one project, one snapshot per window, a dashboard with data."""
from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from evidently.ui.service.base import SeriesFilter
from evidently.ui.service.storage.local import create_local_project_manager
from evidently.ui.service.type_aliases import ZERO_UUID
from evidently.ui.workspace import Workspace

from tasks.monitoring import workspace
from tasks.monitoring.drift import drift_snapshot, summarize_drift
from tasks.monitoring.features import FEATURE_COLUMNS, LOGGED_COLUMNS
from tests.conftest import make_params

pytestmark = pytest.mark.monitoring

START = datetime(2025, 3, 1, 8, 0)
END = START + timedelta(hours=1)


def logged_rows(rows: int, seed: int, shift: float = 0.0) -> pd.DataFrame:
    """Rows as the service logs them; `shift` makes the images brighter and sharper, the model less sure."""
    rng = np.random.default_rng(seed)
    data = {col: rng.normal(0.5, 0.1, rows) for col in FEATURE_COLUMNS}
    for col in ("brightness", "contrast", "sharpness"):
        data[col] += shift
    data["width"] = data["height"] = np.full(rows, 32.0)
    data["confidence"] = rng.uniform(0.6, 1.0, rows) - shift
    data["prediction"] = rng.choice(["cat", "dog", "fox"], rows, p=[0.8, 0.1, 0.1] if shift else None)
    return pd.DataFrame(data)[LOGGED_COLUMNS]


@pytest.fixture(scope="module")
def windows() -> list:
    """A calm window, then a shifted one an hour later, both against the same reference."""
    reference, monitor = logged_rows(80, seed=0), make_params().monitor
    return [
        drift_snapshot(reference, logged_rows(80, seed=1), monitor, timestamp=START, tags=["test"]),
        drift_snapshot(reference, logged_rows(80, seed=2, shift=0.3), monitor, timestamp=END, tags=["test"]),
    ]


def panel_series(manager, project_id, panel) -> dict:
    """What the UI's dashboard fetches for a panel ({legend: values per window}), via the UI's own storage."""
    filters = [SeriesFilter(metric=v.metric, metric_labels=v.metric_labels, tags=v.tags, metadata=v.metadata)
               for v in panel.values]
    response = asyncio.run(manager.get_data_series(ZERO_UUID, project_id, filters, None, None))
    assert [s.timestamp for s in response.sources] == [START, END]
    legends = {}
    for series in response.series:
        legend = panel.values[series.filter_index].legend
        legends[legend.replace("{{label}}", series.params.get("label", ""))] = series.values
    return legends


def test_windows_build_one_project_whose_dashboard_plots_them(tmp_path: Path, windows: list):
    ws_dir = tmp_path / "evidently"
    first = workspace.add_window(ws_dir, windows[0])
    second = workspace.add_window(ws_dir, windows[1], name="shifted window")
    project = workspace.open_project(ws_dir)

    assert first.startswith(f"/projects/{project.id}/reports/") and second.startswith(f"/projects/{project.id}/")
    assert first != second

    fresh = Workspace(str(ws_dir))  # as `evidently ui` opens it
    (stored,) = fresh.list_projects()
    assert (stored.id, stored.name) == (project.id, workspace.PROJECT_NAME)
    runs = {str(run): fresh.get_run(project.id, run) for run in fresh.list_runs(project.id)}
    assert set(runs) == {first.rsplit("/", 1)[1], second.rsplit("/", 1)[1]}
    assert sorted(run.timestamp for run in runs.values()) == [START, END]

    dashboard = fresh.get_dashboard(project.id)
    panels = [p.title for p in workspace.dashboard_panels()]
    assert [p.title for p in dashboard.panels] == panels
    assert [t.title for t in dashboard.tabs] == [workspace.TAB]
    assert dashboard.tabs[0].panels == [p.id for p in dashboard.panels]

    manager = create_local_project_manager(str(ws_dir), autorefresh=False)  # the storage `evidently ui` reads
    plotted = {p.title: panel_series(manager, project.id, p) for p in dashboard.panels}
    for title, series in plotted.items():  # every panel has every series it names, with a value per window
        panel = next(p for p in dashboard.panels if p.title == title)
        assert len(series) >= len(panel.values), title
        assert all(len(values) == 2 and None not in values for values in series.values()), title

    calm, shifted = (summarize_drift(w.dict()) for w in windows)
    fired = plotted["Column tests that fired"]["drifted columns"]
    assert fired == [calm["drifted_count"], shifted["drifted_count"]] == plotted["Latest window"]["drifted columns"]
    assert fired[0] == 0 and fired[1] > 0
    share = plotted["Latest window"]["drifted share"]
    assert share == pytest.approx([calm["drift_share_observed"], shifted["drift_share_observed"]], abs=1e-4)
    confidence = plotted["Mean confidence"]["mean confidence"]
    assert confidence == pytest.approx([calm["mean_confidence"], shifted["mean_confidence"]], abs=1e-4)
    assert confidence[1] < confidence[0] - 0.2
    stats = plotted["Drifted image statistics"]
    assert stats["brightness"] == [0.0, 1.0] and stats["width"] == [0.0, 0.0]
    flags = {**stats, **plotted["Drifted model outputs"], **plotted["Drifted embedding dimensions"]}
    assert [col for col, values in flags.items() if values[1]] == [c for c in flags if c in shifted["drifted_columns"]]
    mix = plotted["Prediction mix"]
    assert set(mix) == {"cat", "dog", "fox"}
    assert mix["cat"][1] > mix["cat"][0] and mix["cat"][1] == pytest.approx(shifted["prediction_mix"]["cat"])


def test_the_project_is_found_not_duplicated(tmp_path: Path, windows: list):
    ws_dir = tmp_path / "evidently"
    project = workspace.open_project(ws_dir)
    workspace.add_window(ws_dir, windows[0])

    assert workspace.open_project(ws_dir).id == project.id
    assert [p.id for p in Workspace(str(ws_dir)).list_projects()] == [project.id]
    assert len(Workspace(str(ws_dir)).get_dashboard(project.id).panels) == len(workspace.dashboard_panels())


def test_summary_keeps_its_keys_and_adds_confidence_and_mix(windows: list):
    summary = summarize_drift(windows[1].dict())

    assert list(summary)[:7] == ["verdict", "drifted_columns", "drifted_count", "columns_checked",
                                 "drift_share_observed", "dataset_drift", "columns"]
    assert summary["drifted_count"] == len(summary["drifted_columns"])
    assert 0.3 < summary["mean_confidence"] < 0.6
    assert set(summary["prediction_mix"]) == {"cat", "dog", "fox"}
    assert sum(summary["prediction_mix"].values()) == pytest.approx(1.0, abs=1e-3)


def test_one_strongly_drifted_column_flags_the_window_under_bonferroni_not_under_share():
    reference, current = logged_rows(300, seed=3), logged_rows(200, seed=4)
    current["brightness"] -= 0.06  # a new camera: darker images, nothing else changes

    judged = {detector: summarize_drift(drift_snapshot(reference, current, make_params(
        monitor={"detector": detector}).monitor).dict()) for detector in ("bonferroni", "share")}

    bonferroni, share = judged["bonferroni"], judged["share"]
    assert bonferroni["dataset_drift"] and bonferroni["drifted_columns"] == ["brightness"]
    assert bonferroni["verdict"].startswith("drift: 1 of 15 column tests fired (1 needed): brightness: ks ")
    assert "brightness" in share["drifted_columns"] and not share["dataset_drift"]
    assert share["verdict"].startswith(f"no drift: {share['drifted_count']} of 15 column tests fired (8 needed)")
