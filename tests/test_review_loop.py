"""The labelling loop end to end: suspect labels and uncertain served images become Label Studio tasks,
reviews made through Label Studio's API change data.root, and the new-data event starts one retrain.

A real Label Studio on loopback (started by the same code as `python -m flows.review serve`), the real
review flow on the session's Prefect server, and a copy of the trained project.
"""
from __future__ import annotations

import shutil
import time
from datetime import datetime, timezone

import httpx
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from prefect.client.orchestration import get_client

from flows.deployments import register
from flows.retrain import retrain
from flows.review import review_sync, studio_home
from flows.settings import FlowParams
from flows.watch_data import check_data
from tasks.common.config import load_params
from tasks.common.paths import SUSPECTS_CSV
from tasks.labels.queue import keep_uncertain, queue_dir
from tasks.labels.review import LOG_NAME
from tasks.labels.studio import credentials, running
from tests.conftest import PROJECT_ROOT, free_port
from tests.projects import copy_trained, set_params
from tests.test_ops_triggers import retrain_runs

pytestmark = [pytest.mark.labelling, pytest.mark.slow(reason="a real Label Studio server and Prefect server")]


@pytest.fixture(scope="module")
def loop(trained, tmp_path_factory):
    """A copy of the trained project with one suspect label and three uncertain served images, its
    deployments registered, the data watcher's baseline taken, and its Label Studio running."""
    project = copy_trained(trained, tmp_path_factory.mktemp("review") / "copy").repo
    shutil.copytree(PROJECT_ROOT / "flows", project / "flows", ignore=shutil.ignore_patterns("__pycache__"))
    set_params(project, "ops", label_studio_port=free_port())
    params = load_params(project / "params.yaml", FlowParams)
    suspect = sorted((project / "images/cat").glob("*.png"))[0]
    pd.DataFrame([{"rank": 1, "file": "data/clean/images/cat/x.png", "path": f"cat/{suspect.name}", "split": "train",
                   "given_label": "cat", "suggested_label": "dog", "label_quality": 0.01, "given_probability": 0.01,
                   "suggested_probability": 0.97}]).to_csv(project / SUSPECTS_CSV, index=False)
    served = [Image.fromarray(np.full((16, 16, 3), v, dtype=np.uint8)) for v in (40, 90, 140)]
    keep_uncertain(queue_dir(project / params.monitor.traffic_dir), served,
                   np.array([[0.45, 0.40, 0.15]] * 3), ["cat", "dog", "fox"], "image-classifier:v1",
                   ["a.png", "b.png", "c.png"], below=0.2)
    register(params, project)
    assert check_data(project, params).startswith("recorded")
    with running(studio_home(project, params), project, port=params.ops.label_studio_port) as server:
        yield {"project": project, "params": params, "url": server.url,
               "token": credentials(studio_home(project, params)).api_key}


def new_data_retrains(since: datetime) -> list:
    return [r for r in retrain_runs("new data") if r.created >= since]


def api(loop) -> httpx.Client:
    return httpx.Client(base_url=loop["url"], headers={"Authorization": f"Token {loop['token']}"}, timeout=30)


def project_tasks(loop) -> list[dict]:
    with api(loop) as http:
        [project] = http.get("/api/projects").json()["results"]
        return http.get("/api/tasks", params={"project": project["id"], "fields": "all"}).json()["tasks"]


def annotate(loop, task: dict, choice: str) -> None:
    result = [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [choice]}}]
    with api(loop) as http:
        http.post(f"/api/tasks/{task['id']}/annotations", json={"result": result}).raise_for_status()


def test_the_loop_from_tasks_to_data_and_one_retrain(loop):
    project, params = loop["project"], loop["params"]
    first = review_sync(repo_dir=str(project))
    assert (first["tasks_added"], first["reviews_applied"]) == (4, 0)
    tasks = {t["data"]["key"]: t for t in project_tasks(loop)}
    assert sorted(t["data"]["kind"] for t in tasks.values()) == ["suspect", "uncertain", "uncertain", "uncertain"]
    for task in tasks.values():  # each with the model's prediction as its pre-annotation
        [prediction] = task["predictions"]
        choice = prediction["result"][0]["value"]["choices"][0]
        assert choice == ("dog" if task["data"]["kind"] == "suspect" else "cat")
        assert prediction["model_version"] and prediction["score"] > 0

    again = review_sync(repo_dir=str(project))
    assert (again["tasks_added"], len(project_tasks(loop))) == (0, 4)  # nothing repeated

    # A reviewer: the suspect is a dog; two served images are a fox and a "wolf" (not a class); the
    # fourth was pruned from the queue before its review arrived.
    suspect = next(t for t in tasks.values() if t["data"]["kind"] == "suspect")
    served = sorted((t for t in tasks.values() if t["data"]["kind"] == "uncertain"), key=lambda t: t["data"]["key"])
    annotate(loop, suspect, "dog")
    annotate(loop, served[0], "fox")
    annotate(loop, served[1], "wolf")
    annotate(loop, served[2], "fox")
    (project / served[2]["data"]["path"]).unlink()
    started = datetime.now(timezone.utc)

    done = review_sync(repo_dir=str(project))
    assert (done["reviews_applied"], done.get("relabelled"), done.get("added"), done.get("skipped")) == (4, 1, 1, 2)
    old = suspect["data"]["path"]
    assert not (project / old).exists() and (project / "images/dog" / old.split("/")[-1]).is_file()
    assert len(list((project / "images/fox").glob("*.png"))) == 11  # 10 + the reviewed served image
    log = pd.read_csv(project / params.labels.review_dir / LOG_NAME).set_index("key")
    served_keys = [t["data"]["key"] for t in served]
    assert log.loc[[suspect["data"]["key"], *served_keys], "action"].tolist() == ["relabelled", "added", "skipped",
                                                                                 "skipped"]
    assert "chose ['wolf'] instead of one of the project's choices" in log.loc[served_keys[1], "note"]
    assert "vanished since the task was made" in log.loc[served_keys[2], "note"]
    assert set(log["reviewer"].dropna()) == {credentials(studio_home(project, params)).username}
    assert (project / f"{params.data.root}.dvc").is_file() and (project / f"{params.labels.review_dir}.dvc").is_file()
    assert review_sync(repo_dir=str(project))["reviews_applied"] == 0  # applied once

    assert "changed" in check_data(project, params)
    deadline = time.monotonic() + 60
    while not (runs := new_data_retrains(since=started)) and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(3)  # a second retrain, if the event started one, would be there by now
    runs = new_data_retrains(since=started)
    with get_client(sync_client=True) as client:  # the triggers' tests count the retrain runs of this server
        for run in runs:
            client.delete_flow_run(run.id)
    assert len(runs) == 1, runs


def test_a_label_studio_that_is_not_there_is_one_clear_line(loop, tmp_path):
    set_params(loop["project"], "ops", label_studio_port=free_port())
    try:
        state = review_sync(repo_dir=str(loop["project"]), return_state=True)
    finally:
        set_params(loop["project"], "ops", label_studio_port=loop["params"].ops.label_studio_port)
    assert state.is_failed() and "Label Studio is not reachable at http://127.0.0.1:" in state.message


def test_a_drift_retrain_on_unchanged_data_is_skipped_saying_what_waits_for_review(trained, tmp_path, monkeypatch):
    """Production was trained on this very data.root: a retrain could only reproduce it."""
    copy = copy_trained(trained, tmp_path / "copy")
    project = copy.repo
    monkeypatch.setenv("BENTOML_HOME", str(copy.bentoml_home))  # where production's lineage is
    set_params(project, "ops", retrain={**load_params(project / "params.yaml", FlowParams).ops.retrain.model_dump(),
                                        "cooldown_minutes": 0})
    params = load_params(project / "params.yaml", FlowParams)
    keep_uncertain(queue_dir(project / params.monitor.traffic_dir), [Image.new("RGB", (16, 16))],
                   np.array([[0.5, 0.45, 0.05]]), ["cat", "dog", "fox"], "image-classifier:v1", ["a.png"], below=0.2)
    state = retrain(trigger="drift", repo_dir=str(project), return_state=True)
    assert state.name == "Skipped" and "data.root has not changed since production" in state.message
    assert f"{1 + len(pd.read_csv(project / SUSPECTS_CSV))} images wait for review" in state.message
