"""DVC sees the evaluation: two experiments differ in `dvc metrics diff`, `dvc plots diff`, `dvc exp show`."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tasks.common.paths import POINTER
from tasks.model.registry import write_pointer
from tests.conftest import PROJECT_ROOT, write_image_set

pytestmark = pytest.mark.slow


def run(repo: Path, *args: str) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.com",
           "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.com"}
    done = subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(args)}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def experiments(tmp_path_factory) -> Path:
    """A git + DVC repo of the project on a tiny image folder, with experiments `base` and `fast`."""
    repo = tmp_path_factory.mktemp("experiments")
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(PROJECT_ROOT / name, repo / name)
    for code in ("tasks", "service"):
        shutil.copytree(PROJECT_ROOT / code, repo / code, ignore=shutil.ignore_patterns("__pycache__"))
    write_pointer(repo / POINTER, {"current": None, "previous": []})  # whatever this checkout's says
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    params["data"]["root"] = "images"
    params["train"].update({"epochs": 2, "batch_size": 16})
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    write_image_set(repo / "images", {"cat": 10, "dog": 10, "fox": 10})
    (repo / ".gitignore").write_text("/data\n/models\n/reports\n/checkpoints\n/.cache\n__pycache__\n")
    run(repo, "git", "init", "-q")
    run(repo, sys.executable, "-m", "dvc", "init", "-q")
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-qm", "baseline")
    # Up to the gate (package and monitor add nothing to compare), with augment for its preview plot.
    run(repo, sys.executable, "-m", "dvc", "exp", "run", "-q", "-n", "base", "gate", "augment")
    run(repo, sys.executable, "-m", "dvc", "exp", "run", "-q", "-n", "fast", "-S", "train.lr=0.02", "gate", "augment")
    return repo


def test_metrics_diff_between_experiments_shows_the_new_metrics(experiments: Path):
    diff = json.loads(run(experiments, sys.executable, "-m", "dvc", "metrics", "diff", "base", "fast", "--all",
                          "--json"))
    evaluated = diff["reports/evaluate/metrics.json"]
    for key in ("accuracy", "balanced_accuracy", "weighted_f1", "top_k_accuracy", "log_loss", "ece",
                "ece_uncalibrated", "temperature", "per_class.cat.f1", "slices.brightness"):
        assert any(name.startswith(key) for name in evaluated), key
    assert evaluated["temperature"]["old"] != evaluated["temperature"]["new"]  # two different models


def test_plots_diff_between_experiments_shows_the_new_plots(experiments: Path):
    shown = json.loads(run(experiments, sys.executable, "-m", "dvc", "plots", "diff", "base", "fast", "--json"))
    assert "errors" not in shown, shown.get("errors")
    plots = shown["data"]
    for plot in ("Calibration", "Per-class F1", "Confusion", "Loss", "reports/evaluate/reliability.png",
                 "reports/evaluate/worst_mistakes.png", "reports/evaluate/confusion_matrix.png"):
        assert plot in plots, plot
    [calibration] = plots["Calibration"]  # one chart, a curve per experiment
    assert {row["rev"] for row in calibration["content"]["data"]["values"]} == {"base", "fast"}
    images = plots["reports/evaluate/reliability.png"]
    assert {rev for image in images for rev in image["revisions"]} == {"base", "fast"}


def test_exp_show_lists_both_experiments_with_their_metrics(experiments: Path):
    shown = run(experiments, sys.executable, "-m", "dvc", "exp", "show", "--csv")
    header, *rows = shown.strip().splitlines()
    assert "accuracy" in header and "ece" in header and "train.lr" in header
    assert {row.split(",")[0] for row in rows} >= {"base", "fast"}
