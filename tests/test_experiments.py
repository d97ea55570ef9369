"""DVC sees the evaluation: two experiments differ in `dvc metrics diff`, `dvc plots diff`, `dvc exp show`."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.projects import copy_trained, under_git

pytestmark = [pytest.mark.pipeline, pytest.mark.slow(reason="trains a second model in a DVC experiment")]


def run(repo: Path, *args: str) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "BENTOML_HOME": str(repo.parent / "bentoml"),  # the copy's own store (the gate reads the champion)
           "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.com",
           "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.com"}
    done = subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(args)}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def experiments(trained, tmp_path_factory) -> Path:
    """The trained project under git, with experiments `base` (the trained one, restored from DVC's run
    cache) and `fast` (another learning rate, trained)."""
    repo = under_git(copy_trained(trained, tmp_path_factory.mktemp("experiments") / "copy").repo)
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
