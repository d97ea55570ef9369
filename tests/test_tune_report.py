"""The study page (tasks/tuning/report.py) on real in-memory Optuna studies: one file that opens
offline, plotly.js in it once, a table row per trial with its state, the params.yaml recipe named,
and a page still written when no importances (or no completed trial) can be shown."""
from __future__ import annotations

import re
from pathlib import Path

import optuna
import pytest

from tasks.tuning.report import write_page

pytestmark = pytest.mark.training

PLOTLY_BANNER = "* plotly.js v"  # the licence banner at the top of the embedded bundle
NOTE = "Parameter importances need at least two completed trials"


@pytest.fixture(autouse=True)
def _quiet():
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    yield
    optuna.logging.set_verbosity(optuna.logging.INFO)


def objective(trial: optuna.Trial) -> float:
    """Three epochs; every third trial is pruned after its second epoch."""
    lr = trial.suggest_float("lr", 1e-3, 1e-1, log=True)
    strategy = trial.suggest_categorical("strategy", ["full", "linear_probe"])
    accuracy = 0.5 + lr + (0.2 if strategy == "full" else 0.0)
    for epoch in (1, 2, 3):
        trial.report(accuracy * epoch / 3, epoch)
        if trial.number % 3 == 2 and epoch == 2:
            raise optuna.TrialPruned()
    return accuracy


def study(n_trials: int, name: str = "tune-abc") -> optuna.Study:
    made = optuna.create_study(study_name=name, direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    made.enqueue_trial({"lr": 0.002, "strategy": "linear_probe"}, user_attrs={"recipe": "params.yaml"})
    made.optimize(objective, n_trials=n_trials)
    return made


def rows(page: str) -> list[list[str]]:
    body = page.split("<tbody>")[1].split("</tbody>")[0]
    return [re.findall(r"<td>(.*?)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", body)]


def test_a_study_page_is_one_offline_file_with_a_row_per_trial(tmp_path: Path):
    searched = study(12)

    path = write_page(searched, tmp_path / "tune", "validation accuracy")

    assert path == tmp_path / "tune" / "index.html"
    page = path.read_text(encoding="utf-8")
    assert not re.findall(r"<script[^>]*\bsrc=", page)  # nothing fetched: no CDN, no file beside it
    assert page.count(PLOTLY_BANNER) == 1
    assert page.count('class="plotly-graph-div"') == 3  # history, importances, intermediate values
    assert NOTE not in page
    table = rows(page)
    assert [int(r[0]) for r in table] == list(range(12))
    assert [r[1] for r in table] == [t.state.name for t in searched.trials]
    assert {r[1] for r in table} == {"COMPLETE", "PRUNED"}
    head = re.findall(r"<th>(.*?)</th>", page)
    assert head == ["number", "state", "validation accuracy", "lr", "strategy", "recipe", "duration (s)",
                    "pruned at epoch"]
    assert table[0][5] == "params.yaml" and table[0][4] == "linear_probe"
    assert all(r[5] == "searched" for r in table[1:])
    assert all(r[7] == "2" for r in table if r[1] == "PRUNED") and all(r[7] == "" for r in table if r[1] != "PRUNED")
    best = searched.best_trial
    assert f"Best trial: #{best.number}, validation accuracy {best.value:.4g}" in page
    assert f"The recipe params.yaml has: {searched.trials[0].value:.4g} (trial #0)" in page
    assert "8 complete, 4 pruned, 0 fail, 0 running, 0 waiting" in page


def test_one_completed_trial_gets_a_note_instead_of_importances(tmp_path: Path):
    page = write_page(study(1), tmp_path / "new", "validation accuracy").read_text(encoding="utf-8")

    assert NOTE in page and "this study has 1 completed" in page
    assert page.count(PLOTLY_BANNER) == 1
    assert page.count('class="plotly-graph-div"') == 2  # history and intermediate values
    assert len(rows(page)) == 1 and "The recipe params.yaml has" in page


def test_settings_that_never_vary_get_the_note(tmp_path: Path):
    same = optuna.create_study(study_name="same", direction="maximize")
    for _ in range(3):
        same.enqueue_trial({"lr": 0.01, "strategy": "full"})
    same.optimize(objective, n_trials=2)  # trials 0 and 1: both complete, the same recipe

    page = write_page(same, tmp_path, "validation accuracy").read_text(encoding="utf-8")

    assert NOTE in page and "this study has 2 completed" in page


def test_a_study_without_a_completed_trial_still_gets_a_page(tmp_path: Path):
    def fails_or_prunes(trial: optuna.Trial) -> float:
        trial.suggest_float("lr", 1e-3, 1e-1, log=True)
        trial.report(0.4, 1)
        if trial.number == 0:
            raise optuna.TrialPruned()
        raise RuntimeError("out of memory")

    stuck = optuna.create_study(study_name="tune-<stuck>", direction="maximize")
    stuck.optimize(fails_or_prunes, n_trials=2, catch=(RuntimeError,))
    stuck.enqueue_trial({"lr": 0.01}, user_attrs={"recipe": "params.yaml"})  # waiting

    page = write_page(stuck, tmp_path, "validation loss").read_text(encoding="utf-8")

    assert "no completed trial yet" in page and NOTE in page
    assert "tune-&lt;stuck&gt;" in page and "tune-<stuck>" not in page
    assert "0 complete, 1 pruned, 1 fail, 0 running, 1 waiting" in page
    assert [r[1] for r in rows(page)] == ["PRUNED", "FAIL", "WAITING"]
    assert rows(page)[2][4] == "params.yaml"
    assert page.count('class="plotly-graph-div"') == 1 and page.count(PLOTLY_BANNER) == 1  # the pruned trial's curve


def test_an_empty_study_gets_a_page_without_plotly(tmp_path: Path):
    page = write_page(optuna.create_study(study_name="empty"), tmp_path, "validation accuracy").read_text()

    assert "no completed trial yet" in page and PLOTLY_BANNER not in page and rows(page) == []
