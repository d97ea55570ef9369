"""Deployments, schedules and triggers on a real Prefect server: what starts a retrain, and what does not.

No worker runs here: a triggered retrain stays a scheduled flow run, which is exactly what is counted.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.events.worker import EventsWorker
from prefect.exceptions import ObjectNotFound
from prefect.schedules import Interval

from flows.deployments import SILENT_RUNS, register
from flows.events import DRIFT_EVENT, announce_drift
from flows.review import check_live_accuracy
from flows.settings import FlowParams
from tasks.common.config import load_params
from tasks.common.paths import POINTER
from tasks.labels.log import LOG_COLUMNS
from tasks.model.registry import write_pointer
from tests.conftest import PROJECT_ROOT, prefect_cli, write_image_set

pytestmark = [pytest.mark.ops, pytest.mark.slow(reason="a real Prefect server: schedules, automations, events")]

COOLDOWN_MINUTES = 30


@pytest.fixture(scope="module")
def project(tmp_path_factory, prefect_server) -> Path:
    """The project's flows and params (a tiny data.root under it), registered with the test server."""
    root = tmp_path_factory.mktemp("project")
    shutil.copytree(PROJECT_ROOT / "flows", root / "flows", ignore=shutil.ignore_patterns("__pycache__"))
    raw = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    raw["data"]["root"] = "images"
    raw["ops"]["retrain"]["cooldown_minutes"] = COOLDOWN_MINUTES
    raw["ops"]["data_check_seconds"] = 1
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    write_image_set(root / "images", {"cat": 3, "dog": 3})
    register(load_params(root / "params.yaml", FlowParams), root)
    return root


def retrain_runs(trigger: str) -> list:
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("retrain/retrain")
        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
                                     limit=200, offset=0, sort="START_TIME_DESC")
    return [r for r in runs if r.parameters.get("trigger") == trigger]


def wait_for_runs(trigger: str, count: int, seconds: float = 60) -> list:
    """The retrain runs with this trigger once there are `count` of them (or the deadline passed)."""
    deadline = time.monotonic() + seconds
    while len(runs := retrain_runs(trigger)) < count and time.monotonic() < deadline:
        time.sleep(0.5)
    return runs


def stored_drift_events(*ends: str) -> list[dict]:
    """Drift events the server has stored for windows with these ends."""
    with get_client(sync_client=True) as client:
        body = {"filter": {"event": {"name": [DRIFT_EVENT]}}, "limit": 50}
        events = client.request("POST", "/events/filter", json=body).json()["events"]
    return [e for e in events if e["payload"].get("end") in ends]


def automations() -> list[dict]:
    with get_client(sync_client=True) as client:
        return client.request("POST", "/automations/filter", json={"limit": 50, "offset": 0}).json()


def test_deployments_exist_with_their_schedules_and_limits(project: Path):
    with get_client(sync_client=True) as client:
        retrain = client.read_deployment_by_name("retrain/retrain")
        monitor = client.read_deployment_by_name("monitor/monitor")
        housekeeping = client.read_deployment_by_name("housekeeping/housekeeping")
        tune = client.read_deployment_by_name("tune/tune")
    assert [(s.schedule.cron, s.schedule.timezone, s.parameters) for s in retrain.schedules] == [
        ("0 3 * * 1", "UTC", {"trigger": "schedule"})]
    assert [s.schedule.cron for s in monitor.schedules] == ["0 * * * *"]
    assert [s.schedule.cron for s in housekeeping.schedules] == ["30 2 * * *"]
    assert tune.schedules == []  # ops.tune.cron: null, on demand only
    assert retrain.global_concurrency_limit.limit == 1 and monitor.global_concurrency_limit.limit == 1
    assert tune.global_concurrency_limit.limit == 1
    assert {d.work_pool_name for d in (retrain, monitor, housekeeping, tune)} == {"imgclf-local"}
    triggers = {a["name"]: a["trigger"] for a in automations()}
    assert set(triggers) == {"retrain on drift", "retrain on new data", "retrain on live accuracy", SILENT_RUNS}
    assert triggers["retrain on drift"]["within"] == COOLDOWN_MINUTES * 60
    assert triggers[SILENT_RUNS]["posture"] == "Proactive" and triggers[SILENT_RUNS]["within"] == 90

    # The server's scheduler turns the cron schedule into upcoming runs that say why they run.
    deadline = time.monotonic() + 60
    while not (scheduled := retrain_runs("schedule")) and time.monotonic() < deadline:
        time.sleep(1)
    assert scheduled and all(r.auto_scheduled and r.state_name == "Scheduled" for r in scheduled)
    assert all(r.expected_start_time.weekday() == 0 and r.expected_start_time.hour == 3 for r in scheduled)

    # Registering again (the operations command restarting) updates in place: nothing doubles.
    register(load_params(project / "params.yaml", FlowParams), project)
    with get_client(sync_client=True) as client:
        assert client.read_deployment_by_name("retrain/retrain").id == retrain.id
    assert sorted(a["name"] for a in automations()) == sorted(["retrain on drift", "retrain on new data",
                                                               "retrain on live accuracy", SILENT_RUNS])


def test_a_drift_event_starts_one_retrain_and_a_second_within_the_cooldown_none(project: Path):
    window = {"start": None, "end": "2026-01-05T10:00:00+00:00", "status": "drift",
              "verdict": "drift: 2 of 15 column tests fired (1 needed): brightness: ks 1e-09 (threshold 0.00333); "
                         "contrast: ks 2e-05 (threshold 0.00333)",
              "drifted_columns": ["brightness", "contrast"], "drift_share_observed": 0.13}
    announce_drift(window)
    EventsWorker.drain_all()
    runs = wait_for_runs("drift", 1)
    assert len(runs) == 1
    assert "brightness: ks 1e-09 (threshold 0.00333); contrast: ks" in runs[0].parameters["reason"]
    assert runs[0].state_name == "Scheduled"  # waits for a worker

    second = {**window, "end": "2026-01-05T11:00:00+00:00"}
    announce_drift(second)
    EventsWorker.drain_all()
    deadline = time.monotonic() + 30
    while len(stored_drift_events(window["end"], second["end"])) < 2:  # the server has the second event ...
        assert time.monotonic() < deadline, "the second drift event never reached the server"
        time.sleep(0.5)
    time.sleep(2)  # ... and its triggers, which read the same stream, have had time to act on it
    assert len(retrain_runs("drift")) == 1


def test_audited_live_accuracy_below_test_accuracy_starts_a_retrain_that_names_the_figures(project: Path):
    """Reviewers found production wrong on 20 of 60 audited images: far below its 0.95 test accuracy."""
    log = project / "data/reviews/log.csv"
    log.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"key": f"audit:{i}.png", "kind": "audit", "action": "added", "file": f"images/cat/{i}.png",
             "new_label": "cat" if i >= 20 else "dog", "model_version": "image-classifier:prod", "prediction": "cat",
             "served_at": "2026-05-01T09:00:00+00:00"} for i in range(60)]
    pd.DataFrame(rows, columns=LOG_COLUMNS).fillna("").to_csv(log, index=False)
    write_pointer(project / POINTER, {"current": {"model": "image-classifier:prod", "test_accuracy": 0.95},
                                      "previous": []})
    params = load_params(project / "params.yaml", FlowParams)

    @flow
    def check() -> dict:
        return check_live_accuracy(project, params)

    result = check()
    EventsWorker.drain_all()
    assert result["alarm"] and result["images"] == 60 and result["accuracy"] == pytest.approx(2 / 3, abs=1e-4)
    runs = wait_for_runs("live accuracy", 1)
    assert len(runs) == 1
    assert runs[0].parameters["reason"].startswith(
        "image-classifier:prod: audited live accuracy 0.667 [0.541, 0.773] on 60 images against test accuracy "
        "0.950: one-sided binomial p = ")
    assert (project / params.ops.home / "evidently").is_dir()  # the live-accuracy snapshots


def test_new_labelled_data_starts_one_retrain(project: Path, prefect_server: str):
    """The data watcher process: a baseline, silence while nothing changes, one event for a change."""
    env = {**os.environ, "PREFECT_API_URL": prefect_server}
    watcher = subprocess.Popen([sys.executable, "-m", "flows.watch_data"], cwd=project, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert watcher.stdout.readline().startswith("recorded 6 files")  # the baseline
        time.sleep(3)  # a few polls (ops.data_check_seconds is 1 here) with nothing changed
        assert retrain_runs("new data") == []  # nothing announced (a stray run would also fail the count below)

        write_image_set(project / "images", {"fox": 3}, seed=5)  # a new class
        (project / "images/bird").mkdir()
        shutil.move(project / "images/cat/img_000.png", project / "images/bird/img_000.png")
        runs = wait_for_runs("new data", 1)
    finally:
        watcher.terminate()
        output = watcher.communicate(timeout=30)[0]
    assert "3 added" in output and "1 relabelled" in output
    assert len(runs) == 1 and "3 added" in runs[0].parameters["reason"]
    assert (project / "images/cat/img_001.png").is_file()  # the data itself is only read
    assert "Traceback" not in output


def test_registering_removes_the_retired_per_minute_deployment(project: Path):
    """A stack upgraded from the watch-data deployment must not keep its schedule going."""
    register_old_watch_data(project)
    register(load_params(project / "params.yaml", FlowParams), project)
    with get_client(sync_client=True) as client, pytest.raises(ObjectNotFound):
        client.read_deployment_by_name("watch-data/watch-data")


def register_old_watch_data(project: Path) -> None:
    (project / "old_watch.py").write_text("from prefect import flow\n\n@flow(name='watch-data')\ndef watch_data():\n"
                                          "    return 'checked'\n")
    flow.from_source(source=str(project), entrypoint="old_watch.py:watch_data").to_deployment(
        name="watch-data", work_pool_name="imgclf-local", schedules=[Interval(60)]).apply()
    with get_client(sync_client=True) as client:
        assert client.read_deployment_by_name("watch-data/watch-data").schedules


@pytest.mark.parametrize("command", [["deployment", "ls"], ["flow-run", "ls"], ["flow", "ls"], ["work-pool", "ls"]])
def test_prefects_own_cli_lists_what_the_server_holds(project: Path, prefect_server: str, command: list[str]):
    listed = listed_by_cli(prefect_server, *command)

    expected = {"deployment": "retrain/retrain", "flow-run": "retrain", "flow": "housekeeping", "work-pool": "imgclf-local"}
    assert expected[command[0]] in listed


def test_prefects_own_cli_runs_a_deployment(project: Path, prefect_server: str):
    before = {run.id for run in monitor_runs()}

    out = listed_by_cli(prefect_server, "deployment", "run", "monitor/monitor")

    created = [run for run in monitor_runs() if run.id not in before]
    with get_client(sync_client=True) as client:  # no worker here; a later test's worker must not pick it up
        for run in created:
            client.delete_flow_run(run.id)
    assert "Created flow run" in out and len(created) == 1


def listed_by_cli(api_url: str, *args: str) -> str:
    """What the `prefect` command prints against the test server (it must exit 0)."""
    done = prefect_cli(api_url, *args)
    assert done.returncode == 0, f"prefect {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def monitor_runs() -> list:
    """The monitor deployment's runs made on demand (the server's scheduler adds the hourly ones)."""
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("monitor/monitor")
        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])))
    return [run for run in runs if not run.auto_scheduled]
