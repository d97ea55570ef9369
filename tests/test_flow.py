"""The real Prefect flow over the real dvc.yaml, on a tiny image folder in a scratch DVC repo.

The first run is the session's shared trained project (conftest.py); the tests that run the flow
again do it on a copy.
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml
from dvc.repo import Repo
from prefect.client.orchestration import get_client

from flows.pipeline import pipeline
from tasks.common.paths import POINTER
from tasks.data.images import open_rgb
from tasks.model.registry import current_model
from tasks.model.served import load_classifier
from tests.projects import Trained, copy_trained, new_project, set_params
from tests.serving import production_serve

pytestmark = pytest.mark.pipeline


def read_artifact(key: str, flow_run_id: str) -> dict | None:
    """The newest artifact with this key made by this flow run, straight from the REST API.

    (prefect 3.8.8's client helpers send nulls or run filters that this endpoint rejects or that
    exclude flow-level artifacts.)
    """
    with get_client(sync_client=True) as client:
        body = {"artifacts": {"key": {"any_": [key]}, "flow_run_id": {"any_": [flow_run_id]}},
                "sort": "CREATED_DESC", "limit": 1, "offset": 0}
        found = client.request("POST", "/artifacts/filter", json=body).json()
    return found[0] if found else None


def run_flow(repo: Path) -> tuple[dict, str]:
    """The flow's summary and its flow run id."""
    state = pipeline(repo_dir=str(repo), return_state=True)
    return state.result(), str(state.state_details.flow_run_id)


def test_the_flow_runs_every_stage_promotes_and_pushes(trained: Trained):
    """The end-to-end smoke test: the shared trained project is this run (conftest.py)."""
    repo, first = trained.repo, dict(trained.summary)
    stages = list(yaml.safe_load((repo / "dvc.yaml").read_text())["stages"])
    package = json.loads((repo / "reports/package/bento.json").read_text())
    pushed = int(first.pop("push").removesuffix(" files pushed to remote storage"))
    assert first == {**{stage: "ran" for stage in stages}, "promote": f"promoted {package['model_tag']}"}
    assert pushed > 0 and len([f for f in trained.remote.rglob("*") if f.is_file()]) == pushed
    for artifact in [
        "data/manifest.csv", "reports/validate/data_docs/index.html", "data/clean/quarantine.csv",
        "data/split/test.csv", "models/model.safetensors", "reports/evaluate/confusion_matrix.png",
        "reports/evaluate/report.html", "reports/gate/decision.json", "reports/package/bento.json",
        "reports/monitor/drift.html", "runtime/runtime.json",
    ]:
        assert (repo / artifact).is_file(), artifact
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert set(lock["stages"]) == set(stages)
    assert current_model(repo / POINTER) == package["model_tag"]

    table = read_artifact("evaluation-metrics", trained.flow_run_id)
    assert table is not None and "accuracy" in table["description"]
    metrics = json.loads((repo / "reports/evaluate/metrics.json").read_text())
    assert {row["class"] for row in json.loads(table["data"])} == set(metrics["per_class"])
    report = read_artifact("evaluation-report", trained.flow_run_id)
    assert (repo / "reports/evaluate/report.html").as_uri() in report["data"]

    # Each runtime scored and timed by the evaluate stage; the chosen one goes to the gate, the store
    # and the report.
    runtime = json.loads((repo / "runtime/runtime.json").read_text())
    assert set(runtime["figures"]) == {"torch", "onnx", "onnx-int8"} and runtime["setting"] == "auto"
    assert all(f["batch_img_s"] > 0 and 0 <= f["accuracy"] <= 1 for f in runtime["figures"].values())
    assert runtime["figures"]["onnx"]["top1_agreement"] == 1.0  # fp32: PyTorch's answers
    decision = json.loads((repo / "reports/gate/decision.json").read_text())
    assert decision["challenger"]["runtime"]["name"] == runtime["runtime"] == package["metadata"]["runtime"]["name"]
    assert "Serving runtime" in (repo / "reports/evaluate/report.html").read_text()
    # The monitor stage's reference embeddings are the served runtime's, as the service logs them.
    reference = pd.read_csv(repo / "reports/monitor/reference.csv")
    served = load_classifier(repo / "models", repo / "runtime")
    _, embeddings = served.predict(served.preprocess([open_rgb(repo / f) for f in reference["file"]]))
    assert served.runtime == runtime["runtime"]
    assert np.allclose(reference[[f"emb_{i}" for i in range(8)]].to_numpy(), embeddings, atol=1e-4)


@pytest.mark.slow(reason="starts a second server (make test's serving tests have one)")
def test_the_promoted_model_is_served(trained: Trained, tmp_path):
    """`python -m tasks.production serve` (make serve) on the flow's promotion answers one upload."""
    project = copy_trained(trained, tmp_path / "copy")  # the service logs traffic into the project
    env = {**os.environ, "BENTOML_HOME": str(project.bentoml_home), "BENTOML_DO_NOT_TRACK": "True"}
    image = next((project.repo / "images/cat").glob("*.png"))
    with production_serve(project.repo, env) as url:
        answer = httpx.post(url + "/classify", files={"images": (image.name, image.read_bytes(), "image/png")},
                            timeout=60)
    assert answer.status_code == 200, answer.text
    assert answer.json()["model"] == current_model(project.repo / POINTER)
    [result] = answer.json()["results"]
    assert {p["label"] for p in result["predictions"]} == {"cat", "dog", "fox"}


@pytest.mark.slow(reason="runs the flow three more times and asks dvc status six times")
def test_flow_skips_what_is_up_to_date_and_reruns_only_downstream(trained: Trained, tmp_path, monkeypatch):
    project = copy_trained(trained, tmp_path / "copy")
    repo = project.repo
    monkeypatch.setenv("BENTOML_HOME", str(project.bentoml_home))
    stages = list(yaml.safe_load((repo / "dvc.yaml").read_text())["stages"])

    # The promotion changed production, so only the gate looks again: the champion is this model.
    second, _ = run_flow(repo)
    assert second["gate"] == "ran" and second["promote"].startswith("not promoted (already in production)")
    assert all(second[s] == "skipped (up to date)" for s in stages if s != "gate")
    third, _ = run_flow(repo)
    assert {s: third[s] for s in stages} == {stage: "skipped (up to date)" for stage in stages}
    assert_code_edits_change_only_the_stages_that_run_them(repo)

    set_params(repo, "train", lr=0.01)  # another learning rate: the model and everything after it change
    fourth, _ = run_flow(repo)
    upstream = [s for s in stages[: stages.index("train")] if s != "label_quality"]
    assert {s: fourth[s] for s in upstream} == {s: "skipped (up to date)" for s in upstream}
    assert fourth["label_quality"] == "ran"  # its fold models train with the train recipe
    assert all(fourth[s] == "ran" for s in stages[stages.index("train"):])


def changed_stages(repo: Path) -> set[str]:
    """The stages `dvc status` reports as changed."""
    with contextlib.chdir(repo), Repo(str(repo)) as dvc_repo:
        return set(dvc_repo.status())


def assert_code_edits_change_only_the_stages_that_run_them(repo: Path) -> None:
    """Editing a helper deep in a stage's imports makes DVC report that stage, and only the stages
    that import it, as changed: dvc.yaml's code deps follow the imports (tasks/common/code_deps.py)."""
    edits = {
        # monitor -> monitoring/features -> data/images (image_stats: the drift report's columns)
        "tasks/data/images.py": {"validate", "clean", "split", "label_quality", "augment", "train", "evaluate",
                                 "gate", "package", "monitor"},
        # how every image is preprocessed: monitor -> model/served -> model/preprocess; package through
        # service/service.py; train, evaluate, gate and label_quality through model/bundle
        "tasks/model/preprocess.py": {"label_quality", "train", "evaluate", "gate", "package", "monitor"},
        # gate -> model/registry; package through service/service.py (the production pointer)
        "tasks/model/registry.py": {"gate", "package"},
    }
    assert changed_stages(repo) == set()
    for helper, importers in edits.items():
        original = (repo / helper).read_text()
        (repo / helper).write_text(original + "\n# an edit\n")
        try:
            assert changed_stages(repo) == importers, helper
        finally:
            (repo / helper).write_text(original)
    assert changed_stages(repo) == set()


def test_settings_outside_the_stages_re_run_nothing(trained: Trained, tmp_path):
    """ops, tune and labels.review_dir are read by flows, the search and the review flow only: editing
    them (or the models that validate ops and tune) leaves every stage up to date; service.uncertain
    re-runs only the package stage, whose Bento carries params.yaml."""
    repo = copy_trained(trained, tmp_path / "copy").repo
    before = changed_stages(repo)  # the gate, once: the promotion changed the production pointer it reads
    set_params(repo, "ops", service_port=3100, data_check_seconds=5)
    set_params(repo, "tune", trials=3)
    set_params(repo, "labels", review_dir="data/other-reviews")
    settings = repo / "tasks/tuning/settings.py"
    settings.write_text(settings.read_text() + "\n# an edit\n")
    assert changed_stages(repo) == before
    set_params(repo, "service", uncertain={"margin": 0.1, "max_mb": 1024, "days": 90})
    assert changed_stages(repo) == before | {"package"}


@pytest.mark.slow(reason="trains a second model and runs every stage after train again")
def test_flow_stops_before_promotion_when_the_gate_refuses(trained: Trained, tmp_path, monkeypatch, caplog):
    project = copy_trained(trained, tmp_path / "copy")
    repo = project.repo
    monkeypatch.setenv("BENTOML_HOME", str(project.bentoml_home))
    champion = current_model(repo / POINTER)
    pointer = (repo / POINTER).read_bytes()
    assert champion is not None

    set_params(repo, "train", lr=1e-9)  # a challenger whose new head never learned
    with caplog.at_level("WARNING"):
        summary, run_id = run_flow(repo)

    decision = json.loads((repo / "reports/gate/decision.json").read_text())
    assert decision["verdict"] == "refuse" and decision["champion"]["model"] == champion
    reason = decision["reasons"][0]
    assert summary["package"] == "ran"
    assert summary["promote"] == f"not promoted (refuse): {'; '.join(decision['reasons'])}"
    assert (repo / POINTER).read_bytes() == pointer  # production still points at the champion
    artifact = read_artifact("gate-decision", run_id)
    assert artifact["description"].startswith("refuse: ") and reason in artifact["data"]
    assert champion in artifact["data"]
    assert any("gate: refuse" in record.getMessage() and reason in record.getMessage() for record in caplog.records)


def test_flow_stops_with_the_stage_reason_on_bad_data(tmp_path, prefect_server):
    repo = new_project(tmp_path / "repo", {"only_class": 8})
    state = pipeline(repo_dir=str(repo), return_state=True)
    assert state.is_failed()
    assert "stage validate failed" in state.message and "class" in state.message
    assert not (repo / "models").exists()


def test_flow_checks_params_and_data_root_before_any_stage(tmp_path, prefect_server):
    repo = new_project(tmp_path / "repo", {"cat": 4, "dog": 4})
    set_params(repo, "data", root="no/such/folder")
    state = pipeline(repo_dir=str(repo), return_state=True)
    assert state.is_failed() and "data.root:" in state.message and "is not a folder" in state.message
    assert not (repo / "dvc.lock").exists()  # not even the sample stage ran
