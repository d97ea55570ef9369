"""Lineage of a packaged model (data hashes from dvc.lock, git commit, params hash, trigger) and
`python -m tasks.production show`, on real git repositories, dvc.lock files and a BentoML store."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import bentoml
import pytest
import yaml

from tasks import production
from tasks.common import paths
from tasks.model import registry
from tasks.model.lineage import KEYS, TRIGGER_ENV, bento_labels, collect_lineage, format_lineage
from tests.conftest import PROJECT_ROOT, make_params

pytestmark = pytest.mark.pipeline

DATA_HASH = "3f1c0a9e2b7d4c5a8e6f1b2c3d4e5f60.dir"
SPLIT_HASH = "9a8b7c6d5e4f30211203f4e5d6c7b8a9.dir"


def git(workdir: Path, *args: str) -> str:
    identity = ["-c", "user.name=Test", "-c", "user.email=test@example.com", "-c", "commit.gpgsign=false"]
    return subprocess.run(["git", *identity, *args], cwd=workdir, check=True, capture_output=True,
                          text=True).stdout.strip()


def write_dvc_lock(workdir: Path, data_root: str) -> None:
    """A dvc.lock as `dvc repro` writes it, with the validate stage's data dep and the split's out."""
    lock = {"schema": "2.0", "stages": {
        "validate": {"cmd": "python -m tasks.validate", "deps": [
            {"path": data_root, "hash": "md5", "md5": DATA_HASH, "size": 2048, "nfiles": 36},
            {"path": "tasks/validate.py", "hash": "md5", "md5": "0" * 32, "size": 100}]},
        "split": {"cmd": "python -m tasks.split", "outs": [
            {"path": "data/split", "hash": "md5", "md5": SPLIT_HASH, "size": 900, "nfiles": 3},
            {"path": "reports/split/counts.csv", "hash": "md5", "md5": "1" * 32, "size": 50}]},
    }}
    (workdir / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A committed project folder: params.yaml, dvc.lock and the production pointer."""
    workdir = tmp_path / "project"
    workdir.mkdir()
    shutil.copy(PROJECT_ROOT / "params.yaml", workdir / "params.yaml")
    write_dvc_lock(workdir, "data/my_images")
    registry.write_pointer(workdir / paths.POINTER, {"current": None, "previous": []})
    git(workdir, "init", "-q")
    git(workdir, "add", ".")
    git(workdir, "commit", "-q", "-m", "project")
    return workdir


def test_lineage_records_data_hashes_commit_params_and_trigger(project: Path, monkeypatch):
    monkeypatch.setenv(TRIGGER_ENV, "drift")
    before = datetime.now(timezone.utc).replace(microsecond=0)
    lineage = collect_lineage(project, make_params(data={"root": "data/my_images"}))

    assert tuple(lineage) == KEYS
    assert lineage["data_root"] == "data/my_images"
    assert lineage["data_root_hash"] == DATA_HASH and lineage["split_hash"] == SPLIT_HASH
    assert lineage["git_commit"] == git(project, "rev-parse", "HEAD")
    assert lineage["params_sha256"] == hashlib.sha256((project / "params.yaml").read_bytes()).hexdigest()
    assert lineage["trigger"] == "drift"
    created = datetime.fromisoformat(lineage["created_at"])
    assert created.utcoffset() == timedelta(0) and before <= created <= datetime.now(timezone.utc)

    # data.root spelled as an absolute path finds the same dvc.lock entry.
    absolute = collect_lineage(project, make_params(data={"root": str(project / "data/my_images")}))
    assert absolute["data_root_hash"] == DATA_HASH


def test_git_commit_is_dirty_only_when_tracked_code_or_config_changed(project: Path):
    params = make_params(data={"root": "data/my_images"})
    head = git(project, "rev-parse", "HEAD")

    # What a run itself writes (dvc.lock, the pointer) and untracked outputs leave it clean.
    write_dvc_lock(project, "data/other")
    registry.write_pointer(project / paths.POINTER, {"current": {"model": "m:1"}, "previous": [None]})
    (project / "models").mkdir()
    (project / "models/model.json").write_text("{}")
    assert collect_lineage(project, params)["git_commit"] == head

    with (project / "params.yaml").open("a") as f:
        f.write("# edited by hand\n")
    assert collect_lineage(project, params)["git_commit"] == f"{head}-dirty"


def test_lineage_is_unknown_without_dvc_lock_git_or_params(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))  # no repository above tmp_path
    monkeypatch.setenv(TRIGGER_ENV, "   ")
    lineage = collect_lineage(tmp_path, make_params(data={"root": "data/my_images"}))
    for key in ("data_root_hash", "split_hash", "git_commit", "params_sha256"):
        assert lineage[key] == "unknown", key
    assert lineage["trigger"] == "manual" and lineage["data_root"] == "data/my_images"

    # A dvc.lock of another data folder, or one that is not YAML, is no answer either.
    write_dvc_lock(tmp_path, "data/sample")
    assert collect_lineage(tmp_path, make_params(data={"root": "data/my_images"}))["data_root_hash"] == "unknown"
    (tmp_path / "dvc.lock").write_text("stages: [unclosed")
    assert collect_lineage(tmp_path, make_params())["split_hash"] == "unknown"


def test_git_commit_is_unknown_when_git_is_missing(project: Path, monkeypatch):
    (project.parent / "empty").mkdir()
    monkeypatch.setenv("PATH", str(project.parent / "empty"))
    assert collect_lineage(project, make_params())["git_commit"] == "unknown"


def test_bento_labels_are_one_line_strings_per_field_and_metric():
    lineage = {key: f"value of {key}" for key in KEYS} | {"trigger": "new\tdata\n"}
    labels = bento_labels(lineage, {"accuracy": 0.975, "macro_f1": 0.97, "log_loss": 0.1})
    assert set(labels) == {*KEYS, "test_accuracy", "test_macro_f1"}
    assert labels["trigger"] == "new data" and labels["test_accuracy"] == "0.975"
    assert all(isinstance(v, str) and "\n" not in v for v in labels.values())
    assert bento_labels({}, {})["git_commit"] == "unknown"


# ------------------------------------------------------------------------------ production show


def lineage_of(commit: str, trigger: str) -> dict:
    return {"data_root": "data/sample", "data_root_hash": DATA_HASH, "split_hash": SPLIT_HASH,
            "git_commit": commit, "params_sha256": "ab" * 32, "trigger": trigger,
            "created_at": "2025-01-06T03:00:00+00:00"}


@pytest.fixture
def store(tmp_path: Path, monkeypatch):
    """Two models in a BentoML store under a temporary BENTOML_HOME; removed afterwards.

    BentoML fixes its home the first time a process uses it, so the store's real folder is read
    from the saved model, and BENTOML_HOME is pointed there for the command under test.
    """
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "bentoml"))
    tags = []
    for commit, trigger in (("1" * 40, "manual"), ("2" * 40 + "-dirty", "drift")):
        metadata = {"metrics": {"accuracy": 0.9, "macro_f1": 0.89}, "lineage": lineage_of(commit, trigger)}
        with bentoml.models.create("image-classifier", metadata=metadata) as model:
            pass
        tags.append(str(model.tag))
    home = Path(bentoml.models.get(tags[0]).path).parents[2]
    monkeypatch.setenv("BENTOML_HOME", str(home))
    yield {"home": home, "tags": tags}
    for tag in tags:
        bentoml.models.delete(tag)


def entry(model: str, accuracy: float, gate: str = "passed") -> dict:
    return {"model": model, "bento": f"image-classifier-service:{model.split(':')[1]}", "weights_sha256": "0" * 64,
            "promoted_at": "2025-01-06T03:10:00+00:00", "gate": gate, "test_accuracy": accuracy,
            "champion": None, "p_value": 1.0, "reasons": []}


def test_show_prints_lineage_of_production_and_each_predecessor(tmp_path, store, monkeypatch, capsys):
    old, new = store["tags"]
    pointer = {"current": entry(new, 0.9812), "previous": [
        entry(old, 0.95, gate="forced"), entry("image-classifier:gone", 0.93), None]}
    registry.write_pointer(tmp_path / paths.POINTER, pointer)

    newest = lineage_of("2" * 40 + "-dirty", "drift")
    shown = production.show(tmp_path)
    assert shown["current"] == {**pointer["current"], "in_store": True, "lineage": newest, "live": None,
                                "metrics": {"accuracy": 0.9, "macro_f1": 0.89}, "runtime": None}
    assert shown["previous"][0]["lineage"]["git_commit"] == "1" * 40
    assert shown["previous"][1]["in_store"] is False and shown["previous"][1]["lineage"] is None
    assert shown["previous"][2] is None

    monkeypatch.chdir(tmp_path)
    production.main(["show"])
    text = capsys.readouterr().out
    blocks = text.strip().split("\n\n")
    assert len(blocks) == 4
    assert blocks[0].splitlines()[:5] == [
        f"production: {new}",
        f"  bento:         image-classifier-service:{new.split(':')[1]}",
        "  promoted_at:   2025-01-06T03:10:00+00:00",
        "  gate:          passed",
        "  test accuracy: 0.9812",
    ]
    assert blocks[0].splitlines()[5:] == ["  runtime:       torch (packaged before runtimes were measured)",
                                          "  lineage:", *format_lineage(newest)]
    assert f"data_root_hash: {DATA_HASH}" in blocks[0] and "trigger:        drift" in blocks[0]
    assert blocks[1].startswith(f"previous 1: {old}") and "gate:          forced" in blocks[1]
    assert f"git_commit:     {'1' * 40}\n" in blocks[1]
    assert blocks[2].splitlines()[0] == "previous 2: image-classifier:gone"
    assert blocks[2].splitlines()[-1] == (
        f"  lineage:       unknown: the model is not in the BentoML store under {store['home']}")
    assert blocks[3] == "previous 3: none (no production model)"

    production.main(["show", "--json"])
    assert json.loads(capsys.readouterr().out) == shown
    production.main(["--json"])
    assert json.loads(capsys.readouterr().out) == shown


def test_show_a_model_saved_before_lineage_was_recorded(tmp_path, store, monkeypatch):
    with bentoml.models.create("image-classifier", metadata={"metrics": {"accuracy": 0.8}}) as model:
        pass
    store["tags"].append(str(model.tag))
    registry.write_pointer(tmp_path / paths.POINTER, {"current": entry(str(model.tag), 0.8), "previous": []})
    text = production.describe(production.show(tmp_path))
    assert text.splitlines()[-2:] == ["  lineage:", "    (no lineage recorded: packaged before lineage was recorded)"]
