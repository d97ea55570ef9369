"""The real Prefect flow over the real dvc.yaml, on a tiny image folder in a scratch DVC repo."""
from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dvc.repo import Repo
from prefect.client.orchestration import get_client
from prefect.testing.utilities import prefect_test_harness

from flows.pipeline import pipeline
from tasks.common.paths import POINTER
from tasks.model.registry import current_model, write_pointer
from tests.conftest import PROJECT_ROOT, write_image_set

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prefect_api():
    """One ephemeral Prefect API for the module (starting one costs seconds)."""
    with prefect_test_harness():
        yield


def scratch_repo(tmp_path: Path, classes: dict[str, int], **train) -> Path:
    """A DVC repo with the project's dvc.yaml and params.yaml, reading a tiny image folder."""
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(PROJECT_ROOT / "dvc.yaml", repo / "dvc.yaml")
    for code in ("tasks", "service"):  # stage dependencies in dvc.yaml
        shutil.copytree(PROJECT_ROOT / code, repo / code, ignore=shutil.ignore_patterns("__pycache__"))
    # No production model yet, whatever this checkout's pointer says after a `make run`.
    write_pointer(repo / POINTER, {"current": None, "previous": []})
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    params["data"]["root"] = "images"
    params["train"].update({"epochs": 1, "batch_size": 16, **train})
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (repo / "data" / "traffic").mkdir(parents=True)
    (repo / "data" / "traffic" / ".gitkeep").touch()
    write_image_set(repo / "images", classes)
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=repo, check=True)
    return repo


def read_artifact(key: str) -> dict | None:
    """The newest artifact with this key, straight from the REST API.

    (prefect 3.8.8's client helpers send nulls or run filters that this endpoint rejects or that
    exclude flow-level artifacts.)
    """
    with get_client(sync_client=True) as client:
        body = {"artifacts": {"key": {"any_": [key]}}, "sort": "CREATED_DESC", "limit": 1, "offset": 0}
        found = client.request("POST", "/artifacts/filter", json=body).json()
    return found[0] if found else None


def set_train(repo: Path, **values) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"].update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_flow_runs_every_stage_then_skips_and_reruns_only_downstream(tmp_path, monkeypatch, prefect_api):
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "bentoml"))
    repo = scratch_repo(tmp_path, {"cat": 10, "dog": 10, "fox": 10})
    stages = list(yaml.safe_load((repo / "dvc.yaml").read_text())["stages"])
    remote = tmp_path / "storage"
    subprocess.run([sys.executable, "-m", "dvc", "remote", "add", "-d", "storage", str(remote)], cwd=repo, check=True)

    first = pipeline(repo_dir=str(repo))
    package = json.loads((repo / "reports/package/bento.json").read_text())
    pushed = int(first.pop("push").removesuffix(" files pushed to remote storage"))
    assert first == {**{stage: "ran" for stage in stages}, "promote": f"promoted {package['model_tag']}"}
    assert pushed > 0 and len([f for f in remote.rglob("*") if f.is_file()]) == pushed
    for artifact in [
        "data/manifest.csv", "reports/validate/data_docs/index.html", "data/clean/quarantine.csv",
        "data/split/test.csv", "models/model.safetensors", "reports/evaluate/confusion_matrix.png",
        "reports/evaluate/report.html", "reports/gate/decision.json", "reports/package/bento.json",
        "reports/monitor/drift.html",
    ]:
        assert (repo / artifact).is_file(), artifact
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert set(lock["stages"]) == set(stages)
    assert current_model(repo / POINTER) == package["model_tag"]

    table = read_artifact("evaluation-metrics")
    assert table is not None and "accuracy" in table["description"]
    metrics = json.loads((repo / "reports/evaluate/metrics.json").read_text())
    assert {row["class"] for row in json.loads(table["data"])} == set(metrics["per_class"])
    report = read_artifact("evaluation-report")
    assert (repo / "reports/evaluate/report.html").as_uri() in report["data"]

    # The promotion changed production, so only the gate looks again: the champion is this model.
    second = pipeline(repo_dir=str(repo))
    assert second["gate"] == "ran" and second["promote"].startswith("not promoted (already in production)")
    assert all(second[s] == "skipped (up to date)" for s in stages if s != "gate")
    third = pipeline(repo_dir=str(repo))
    assert {s: third[s] for s in stages} == {stage: "skipped (up to date)" for stage in stages}
    assert_code_edits_change_only_the_stages_that_run_them(repo)

    set_train(repo, lr=0.01)  # another learning rate: the model and everything after it change
    fourth = pipeline(repo_dir=str(repo))
    upstream = stages[: stages.index("train")]
    assert {s: fourth[s] for s in upstream} == {s: "skipped (up to date)" for s in upstream}
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
        "tasks/data/images.py": {"validate", "clean", "split", "augment", "train", "evaluate", "gate",
                                 "package", "monitor"},
        # monitor and gate -> model/bundle -> model/transforms (how every image is preprocessed)
        "tasks/model/transforms.py": {"augment", "train", "evaluate", "gate", "package", "monitor"},
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


def test_flow_stops_before_promotion_when_the_gate_refuses(tmp_path, monkeypatch, prefect_api, caplog):
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "bentoml"))
    repo = scratch_repo(tmp_path, {"cat": 10, "dog": 10, "fox": 10}, epochs=3, lr=0.005)
    pipeline(repo_dir=str(repo))
    champion = current_model(repo / POINTER)
    pointer = (repo / POINTER).read_bytes()
    assert champion is not None

    set_train(repo, epochs=1, lr=1e-9)  # a challenger whose new head never learned
    with caplog.at_level("WARNING"):
        summary = pipeline(repo_dir=str(repo))

    decision = json.loads((repo / "reports/gate/decision.json").read_text())
    assert decision["verdict"] == "refuse" and decision["champion"]["model"] == champion
    reason = decision["reasons"][0]
    assert summary["package"] == "ran"
    assert summary["promote"] == f"not promoted (refuse): {'; '.join(decision['reasons'])}"
    assert (repo / POINTER).read_bytes() == pointer  # production still points at the champion
    artifact = read_artifact("gate-decision")
    assert artifact["description"].startswith("refuse: ") and reason in artifact["data"]
    assert champion in artifact["data"]
    assert any("gate: refuse" in record.getMessage() and reason in record.getMessage() for record in caplog.records)


def test_flow_stops_with_the_stage_reason_on_bad_data(tmp_path, prefect_api):
    repo = scratch_repo(tmp_path, {"only_class": 8})
    state = pipeline(repo_dir=str(repo), return_state=True)
    assert state.is_failed()
    assert "stage validate failed" in state.message and "class" in state.message
    assert not (repo / "models").exists()


def test_flow_checks_params_and_data_root_before_any_stage(tmp_path, prefect_api):
    repo = scratch_repo(tmp_path, {"cat": 4, "dog": 4})
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"]["root"] = "no/such/folder"
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    state = pipeline(repo_dir=str(repo), return_state=True)
    assert state.is_failed() and "data.root:" in state.message and "is not a folder" in state.message
    assert not (repo / "dvc.lock").exists()  # not even the sample stage ran
