"""Accuracy on live traffic in the Evidently workspace: one snapshot per day served and model, dated the day served,
replaced when more reviews arrive; and the real `evidently ui` drawing the dashboard."""
from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import httpx
import pandas as pd
import pytest
from evidently.ui.service.base import SeriesFilter
from evidently.ui.service.storage.local import create_local_project_manager
from evidently.ui.service.type_aliases import ZERO_UUID
from evidently.ui.workspace import Workspace
from PIL import Image

from tasks.monitoring import live_workspace
from tasks.monitoring.live_workspace import record_live_accuracy
from tests.browser import CHROMIUM, chromium
from tests.conftest import free_port

pytestmark = pytest.mark.monitoring

DAY1, DAY2 = datetime(2025, 3, 1), datetime(2025, 3, 2)


def answers(rows: list[tuple]) -> pd.DataFrame:
    """Rows (model_version, kind, served_at, prediction, label) as `reviewed_answers` returns them."""
    frame = pd.DataFrame(rows, columns=["model_version", "kind", "served_at", "prediction", "label"])
    frame["served_at"] = pd.to_datetime(frame["served_at"], utc=True, format="ISO8601")
    frame["correct"] = frame["prediction"] == frame["label"]
    return frame


# m1 on day 1: 3 of 4 audited right; 4 least-sure images, none right (they must not pull the 0.75 down).
# m2 on day 1: 1 of 2 audited right, only cat and dog in the sample. m1 on day 2: 2 of 5.
REVIEWED = [
    ("m1", "audit", "2025-03-01T00:00:00Z", "cat", "cat"), ("m1", "audit", "2025-03-01T09:00:00Z", "dog", "dog"),
    ("m1", "audit", "2025-03-01T12:00:00Z", "fox", "fox"), ("m1", "audit", "2025-03-02T01:30:00+02:00", "cat", "dog"),
    *[("m1", "uncertain", f"2025-03-01T1{i}:00:00Z", "cat", "fox") for i in range(4)],
    ("m2", "audit", "2025-03-01T10:00:00Z", "cat", "cat"), ("m2", "audit", "2025-03-01T11:00:00Z", "cat", "dog"),
    *[("m1", "audit", f"2025-03-02T0{i}:00:00Z", "dog", label) for i, label in enumerate(["dog", "dog", "cat",
                                                                                          "fox", "cat"])],
]
MORE = [("m1", "audit", "2025-03-02T22:00:00Z", "fox", "fox"), ("m1", "audit", "2025-03-02T23:59:59Z", "cat", "cat"),
        ("m1", "audit", "2025-03-02T23:00:00Z", "dog", "dog")]


def stored(ws_dir: Path) -> dict[str, dict]:
    """Each stored snapshot by name: its id, timestamp, tags and metric values by metric type, as the UI reads them."""
    workspace = Workspace(str(ws_dir))
    (project,) = workspace.search_project(live_workspace.PROJECT_NAME)
    runs = {}
    for sid in workspace.list_runs(project.id):
        run = workspace.get_run(project.id, sid)
        values = {r.metric_value_location.metric.params["type"].rsplit(":", 1)[-1]: r.value
                  for r in run.metric_results.values()}
        runs[run.name] = {"id": str(sid), "timestamp": run.timestamp, "tags": run.tags, **values}
    return runs


def test_one_snapshot_per_day_and_model_dated_the_day_served_and_replaced_on_more_reviews(tmp_path: Path):
    ws_dir = tmp_path / "evidently"
    paths = record_live_accuracy(ws_dir, answers(REVIEWED))

    runs = stored(ws_dir)
    assert set(runs) == {"m1 served 2025-03-01", "m2 served 2025-03-01",
                         "m1 served 2025-03-02", "m1 served 2025-03-01 least sure"}
    assert sorted(p.rsplit("/", 1)[1] for p in paths) == sorted(r["id"] for r in runs.values())
    (project,) = Workspace(str(ws_dir)).search_project(live_workspace.PROJECT_NAME)
    assert all(p.startswith(f"/projects/{project.id}/reports/") for p in paths)
    expected = {"m1 served 2025-03-01": (DAY1, 3 / 4, 4), "m2 served 2025-03-01": (DAY1, 1 / 2, 2),
                "m1 served 2025-03-02": (DAY2, 2 / 5, 5), "m1 served 2025-03-01 least sure": (DAY1, 0.0, 4)}
    assert {name: (r["timestamp"], r["Accuracy"], r["RowCount"]) for name, r in runs.items()} == expected
    assert runs["m1 served 2025-03-01 least sure"]["tags"] == ["uncertain"]
    assert all(r["tags"] == ["audit"] for name, r in runs.items() if not name.endswith("least sure"))

    dashboard = Workspace(str(ws_dir)).get_dashboard(project.id)
    assert [p.title for p in dashboard.panels] == [p.title for p in live_workspace.dashboard_panels()]
    audited = next(p for p in dashboard.panels if p.title == "Audited live accuracy")
    manager = create_local_project_manager(str(ws_dir), autorefresh=False)  # the storage `evidently ui` reads
    filters = [SeriesFilter(metric=v.metric, metric_labels=v.metric_labels, tags=v.tags, metadata=v.metadata)
               for v in audited.values]
    response = asyncio.run(manager.get_data_series(ZERO_UUID, project.id, filters, None, None))
    assert sorted(s.timestamp for s in response.sources) == [DAY1, DAY1, DAY2]  # the least-sure run is not in it
    assert sorted(response.series[0].values) == pytest.approx([0.4, 0.5, 0.75])

    again = record_live_accuracy(ws_dir, answers(REVIEWED + MORE))  # three more reviews of day 2 arrived

    assert sorted(again) == sorted(paths)
    rerun = stored(ws_dir)
    assert set(rerun) == set(runs) and len(list((ws_dir / str(project.id) / "snapshots").iterdir())) == len(runs)
    assert (rerun["m1 served 2025-03-02"]["Accuracy"], rerun["m1 served 2025-03-02"]["RowCount"]) == (5 / 8, 8)
    assert rerun["m1 served 2025-03-02"]["timestamp"] == DAY2
    assert rerun["m1 served 2025-03-01"]["Accuracy"] == 3 / 4
    assert [p.id for p in Workspace(str(ws_dir)).list_projects()] == [project.id]


@pytest.mark.slow(reason="a real evidently ui and headless Chromium")
def test_the_ui_draws_the_audited_accuracy_panel(tmp_path: Path):
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} not found: sudo apt-get install chromium (.ci/run installs it)")
    ws_dir = tmp_path / "evidently"
    record_live_accuracy(ws_dir, answers(REVIEWED))
    (project,) = Workspace(str(ws_dir)).search_project(live_workspace.PROJECT_NAME)
    port, shot = free_port(), tmp_path / "live_accuracy_panel.png"
    with open(tmp_path / "evidently-ui.log", "w") as log:
        ui = subprocess.Popen([str(Path(sys.executable).parent / "evidently"), "ui", "--workspace", str(ws_dir),
                               "--host", "127.0.0.1", "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/api/projects", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert ui.poll() is None, (tmp_path / "evidently-ui.log").read_text()
            assert time.monotonic() < deadline, "evidently ui did not answer within 60 s"
            time.sleep(0.3)
        with chromium() as page:
            page.goto(f"{url}/projects/{project.id}")
            card = ("[...document.querySelectorAll('h5')].find(h => h.textContent.trim() === 'Audited live accuracy')"
                    "?.closest('.MuiCard-root')")
            points = page.wait_for(f"{card}?.querySelectorAll('circle[class*=MuiMarkElement-root]').length")
            text = page.evaluate(f"{card}.innerText")
            page.evaluate(f"{card}.scrollIntoView({{block: 'center'}})")
            time.sleep(1)  # the line's appearing animation
            page.screenshot(shot)
    finally:
        ui.terminate()
        ui.wait(10)

    assert points == 3  # m1 and m2 on day 1, m1 on day 2: the least-sure images are another panel
    assert "audited accuracy" in text and "2025-03-02" in text
    with Image.open(shot) as image:
        assert image.format == "PNG" and image.width == 1280 and image.height > 600
        assert len(image.convert("RGB").getcolors(1 << 16) or range(1 << 16)) > 20  # drawn, not a blank page
