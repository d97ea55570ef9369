"""The recipe search: its search space refused in one line when it names what the train section
would refuse, and a real Optuna study on a tiny split that starts from params.yaml's recipe and
continues where it stopped."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import optuna
import pytest
import yaml
from optuna.trial import TrialState

from tasks import tune
from tasks.common.config import UserError, load_params, parse_params
from tasks.tuning import study as studies
from tasks.tuning.apply import adopt
from tasks.tuning.report import REPORT_DIR
from tasks.tuning.search import FINISHED
from tasks.tuning.settings import TuningParams
from tasks.tuning.space import parse_space
from tests.conftest import PROJECT_ROOT, free_port, make_params, write_splits
from tests.postgres import postgres_bin, running_postgres
from tests.projects import copy_trained, set_params, under_git

pytestmark = pytest.mark.training

FAST = {"epochs": 2, "batch_size": 8, "image_size": 32, "early_stopping": {"metric": "accuracy", "patience": 0,
                                                                             "min_delta": 0.0}}


@pytest.mark.parametrize("space, message", [
    ({"train.lrr": [0.1]}, "tune.space: train.lrr is not a train setting; name one as train.<key>"),
    ({"lr": [0.1]}, "tune.space: lr is not a train setting"),
    ({"train.augment": [1]}, "tune.space: train.augment is not a train setting"),
    ({"train.lr": {"low": 0.01, "high": 0.001}}, "tune.space: train.lr: low (0.01) is above high (0.001)"),
    ({"train.lr": {"low": 0, "high": 0.01, "log": True}}, "tune.space: train.lr: a log range must stay above 0"),
    ({"train.strategy": ["full", "partial"]}, "train.strategy: 'partial' is not a value the train section accepts"),
    ({"train.epochs": {"low": 0, "high": 5, "int": True}}, "train.epochs: 0 is not a value the train section accepts"),
    ({"train.lr": 3}, "tune.space: train.lr: must be a list of choices or a range {low, high} (got 3)"),
    ({"train.lr": []}, "tune.space: train.lr: an empty list of choices"),
])
def test_a_bad_search_space_gets_one_line(space: dict, message: str):
    params = make_params()
    with pytest.raises(UserError) as err:
        parse_space(space, params.train)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_the_projects_space_is_valid_and_reaches_nested_settings():
    params = load_params(PROJECT_ROOT / "params.yaml", TuningParams)
    assert set(parse_space(params.tune.space, params.train)) == set(params.tune.space)
    nested = parse_space({"train.augment.mixup_alpha": [0.0, 0.2]}, params.train)
    assert nested == {"train.augment.mixup_alpha": [0.0, 0.2]}
    raw = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    with pytest.raises(UserError, match="tune.trials: Input should be greater than or equal to 1"):
        parse_params({**raw, "tune": {**raw["tune"], "trials": 0}}, model=TuningParams)


def test_a_study_starts_from_the_written_recipe_and_continues_where_it_stopped(tmp_path: Path):
    write_splits(tmp_path, {"train": 8, "val": 4})
    space = {"train.lr": {"low": 0.0005, "high": 0.02, "log": True}, "train.strategy": ["linear_probe", "full"]}
    params = make_params(train={**FAST, "lr": 0.002, "strategy": "full"},
                         tune={"trials": 3, "minutes": 0, "parallel": 1, "folds": 1, "space": space})

    first = tune.run(params, tmp_path)

    assert first["trials"]["complete"] + first["trials"]["pruned"] == 3 and first["trials"]["running"] == 0
    assert first["params_yaml_recipe"]["number"] == 0
    report = json.loads((tmp_path / REPORT_DIR / "study.json").read_text())
    assert report["all_trials"][0]["params"] == {"train.lr": 0.002, "train.strategy": "full"}
    for trial in report["all_trials"]:
        assert 0.0005 <= trial["params"]["train.lr"] <= 0.02 or trial["number"] == 0
        assert trial["params"]["train.strategy"] in ("linear_probe", "full")
    assert 0.0 <= first["best"]["value"] <= 1.0 and first["metric"] == "validation accuracy"
    assert not (tmp_path / "checkpoints/tune" / first["study"]).exists() or not any(
        (tmp_path / "checkpoints/tune" / first["study"]).iterdir())  # each trial's checkpoints removed

    again = tune.run(params.model_copy(update={"tune": params.tune.model_copy(update={"trials": 4})}), tmp_path)

    assert again["study"] == first["study"]  # the same data: the same study, one more trial
    assert again["trials"]["complete"] + again["trials"]["pruned"] == 4
    stored = optuna.load_study(study_name=first["study"], storage=studies.open_storage(tmp_path, params)[0])
    assert [t.number for t in stored.trials] == [0, 1, 2, 3]
    assert len({tuple(sorted(t.params.items())) for t in stored.trials}) == 4  # the second run drew anew
    assert (tmp_path / ".ops/tune/journal.log").is_file()


def start_tune(workdir: Path, params, *args: str, env: dict | None = None) -> subprocess.Popen:
    """`python -m tasks.tune --no-exp` in workdir, as a user runs it."""
    (workdir / "params.yaml").write_text(yaml.safe_dump(params.model_dump(by_alias=True, mode="json")))
    return subprocess.Popen([sys.executable, "-m", "tasks.tune", "--no-exp", *args], cwd=workdir,
                            env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT), **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finished(process: subprocess.Popen) -> str:
    out, _ = process.communicate(timeout=300)
    assert process.returncode == 0, out
    return out


def searching(trials: int, epochs: int = 3) -> dict:
    space = {"train.lr": {"low": 0.0005, "high": 0.02, "log": True}, "train.label_smoothing": {"low": 0.0, "high": 0.2}}
    return dict(train={**FAST, "epochs": epochs, "strategy": "full"},
                tune={"trials": trials, "minutes": 0, "parallel": 1, "folds": 1, "pruner": "median", "space": space})


def load(workdir: Path, params) -> optuna.Study:
    return optuna.load_study(study_name=studies.study_name(workdir, studies.question(params)), storage=studies.open_storage(workdir, params)[0])


def trials_run(*outputs: str) -> list[int]:
    """The trial numbers that processes started training, from their 'tune trial N:' lines."""
    return [int(m) for out in outputs for m in re.findall(r"^tune trial (\d+):", out, re.M)]


def test_a_killed_study_continues_with_the_same_command(tmp_path: Path):
    write_splits(tmp_path, {"train": 8, "val": 4})
    params = make_params(**searching(trials=4, epochs=6))
    first = start_tune(tmp_path, params)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:  # kill -9 while trial 1 trains, trial 0 done
        study = load(tmp_path, params) if (tmp_path / ".ops/tune/journal.log").exists() else None
        states = [t.state for t in study.trials] if study else []
        if states[:2] == [TrialState.COMPLETE, TrialState.RUNNING] and "pid" in study.trials[1].user_attrs:
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"trial 1 never started: {first.communicate(timeout=5)[0] if first.poll() is not None else ''}")
    first.kill()
    first.wait()
    kept = load(tmp_path, params).trials[0]

    again = finished(start_tune(tmp_path, params))

    study = load(tmp_path, params)
    assert study.trials[0].value == kept.value and study.trials[0].state == TrialState.COMPLETE  # kept, not rerun
    assert study.trials[1].state == TrialState.FAIL  # the killed trial: marked, never a result
    retry = [t for t in study.trials if t.system_attrs.get("failed_trial") == 1]
    assert len(retry) == 1 and retry[0].params == study.trials[1].params  # run again once, same values
    assert sum(t.state in FINISHED for t in study.trials) == 4
    assert 0 not in trials_run(again) and '"marked_failed_now": [1]' in again


def test_two_processes_share_one_study_and_run_no_trial_twice(tmp_path: Path):
    write_splits(tmp_path, {"train": 8, "val": 4})
    params = make_params(**searching(trials=6))
    outputs = [finished(p) for p in [start_tune(tmp_path, params), start_tune(tmp_path, params)]]

    study = load(tmp_path, params)
    started = trials_run(*outputs)
    assert sorted(started) == sorted(set(started)), "a trial was trained twice"
    assert all(trials_run(out) for out in outputs), "one of the processes never ran a trial"
    assert [t.user_attrs.get("recipe") for t in study.trials].count("params.yaml") == 1
    assert len({t.user_attrs["pid"] for t in study.trials}) == 2
    assert 6 <= sum(t.state in FINISHED for t in study.trials) <= 7  # the last may overlap by one
    assert all(t.state in FINISHED for t in study.trials)


def test_an_unreachable_study_database_gets_one_line(tmp_path: Path, monkeypatch):
    write_splits(tmp_path, {"train": 4, "val": 2})
    monkeypatch.setenv(studies.STORAGE_ENV, f"postgresql://tune:secret@127.0.0.1:{free_port()}/optuna")
    with pytest.raises(UserError) as err:
        tune.run(make_params(**searching(trials=1)), tmp_path)
    message = str(err.value)
    assert message.startswith("IMGCLF_TUNE_STORAGE: cannot open the study database (") and "\n" not in message
    assert "connection" in message.lower() and "secret" not in message


@pytest.mark.slow(reason="starts a PostgreSQL server and two searching processes")
def test_two_processes_share_one_study_in_postgresql(tmp_path: Path):
    write_splits(tmp_path, {"train": 8, "val": 4})
    params = make_params(**searching(trials=6))
    try:
        postgres_bin()
    except RuntimeError:
        pytest.skip("needs PostgreSQL's server: sudo apt-get install postgresql")
    with running_postgres(tmp_path) as url:
        env = {studies.STORAGE_ENV: url}
        outputs = [finished(p) for p in [start_tune(tmp_path, params, env=env), start_tune(tmp_path, params, env=env)]]
        storage = optuna.storages.RDBStorage(url)
        study = optuna.load_study(study_name=studies.study_name(tmp_path, studies.question(params)), storage=storage)
        trials = study.trials
        storage.engine.dispose()

    started = trials_run(*outputs)
    assert sorted(started) == sorted(set(started)) and all(trials_run(out) for out in outputs)
    assert [t.user_attrs.get("recipe") for t in trials].count("params.yaml") == 1
    assert 6 <= sum(t.state in FINISHED for t in trials) <= 7 and all(t.state in FINISHED for t in trials)
    assert not (tmp_path / ".ops/tune/journal.log").exists()  # the database held the study, not the journal
    assert '"storage": "127.0.0.1:' in outputs[0] and url.split("@")[0] not in "".join(outputs)  # no password shown


def test_folds_score_a_trial_by_the_mean_over_train_and_val(tmp_path: Path):
    write_splits(tmp_path, {"train": 6, "val": 3})
    params = make_params(**{**searching(trials=2, epochs=2), "tune": {**searching(2)["tune"], "folds": 3}})

    summary = tune.run(params, tmp_path)

    trials = json.loads((tmp_path / REPORT_DIR / "study.json").read_text())["all_trials"]
    for trial in trials:
        assert len(trial["fold_values"]) == 3 and trial["value"] == pytest.approx(sum(trial["fold_values"]) / 3)
    assert summary["best"]["fold_std"] is not None
    with pytest.raises(UserError, match="tune.folds: 10 folds need at least 10 labelled images per class"):
        tune.run(params.model_copy(update={"tune": params.tune.model_copy(update={"folds": 10})}), tmp_path)


@pytest.mark.slow(reason="a recipe search on the trained project, then its best trial as a DVC experiment")
def test_the_tune_flow_runs_the_best_recipe_as_a_dvc_experiment(trained, tmp_path: Path, monkeypatch):
    from prefect.client.orchestration import get_client

    from flows.tune import tune as tune_flow

    repo = under_git(copy_trained(trained, tmp_path / "copy").repo)
    # params.yaml's recipe cannot learn in one epoch at that rate; the space only holds recipes that can.
    set_params(repo, "train", lr=1e-7, strategy="linear_probe")
    set_params(repo, "tune", trials=2, minutes=0, parallel=1, folds=1,
               space={"train.lr": {"low": 0.02, "high": 0.05, "log": True}, "train.epochs": [10]})
    identity = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@localhost", "GIT_COMMITTER_NAME": "t",
                "GIT_COMMITTER_EMAIL": "t@localhost", "BENTOML_HOME": str(repo.parent / "bentoml")}
    for key, value in identity.items():
        monkeypatch.setenv(key, value)
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run(["git", "commit", "-qm", "baseline"], cwd=repo, check=True)

    state = tune_flow(repo_dir=str(repo), return_state=True)

    assert state.is_completed(), state.message
    summary = state.result()
    best = summary["best"]
    assert best["number"] == 1 and best["value"] > summary["params_yaml_recipe"]["value"]
    name = f"{summary['study']}-trial-1"
    assert summary["adopted"].startswith(f"DVC experiment {name}")
    shown = json.loads(subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "--json"], cwd=repo,
                                      capture_output=True, text=True, check=True).stdout)
    experiments = {exp["name"]: exp for commit in shown for exp in (commit.get("experiments") or [])}
    ran = experiments[name]["revs"][0]["data"]
    assert ran["params"]["params.yaml"]["data"]["train"]["lr"] == pytest.approx(best["params"]["train.lr"], rel=1e-3)
    assert "reports/evaluate/metrics.json" in ran["metrics"]
    assert yaml.safe_load((repo / "params.yaml").read_text())["train"]["lr"] == 1e-7  # the workspace untouched
    with get_client(sync_client=True) as client:
        artifact = client.read_latest_artifacts(limit=50)
    [result] = [a for a in artifact if a.key == "tune-result"]
    assert "| train.lr |" in result.data and "no production model yet" not in result.data

    changes = adopt(summary, repo, "apply")  # --apply instead: params.yaml takes the best values

    assert changes.startswith("params.yaml: train.lr: 1.0e-07 -> ") and "train.epochs: 1 -> 10" in changes
    assert yaml.safe_load((repo / "params.yaml").read_text())["train"]["lr"] == pytest.approx(
        best["params"]["train.lr"], rel=1e-3)


@pytest.mark.slow(reason="a study, then optuna-dashboard started and read over HTTP")
def test_the_dashboard_serves_the_study_on_loopback(tmp_path: Path):
    write_splits(tmp_path, {"train": 4, "val": 2})
    params = make_params(**searching(trials=1, epochs=1))
    study = tune.run(params, tmp_path)["study"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params.model_dump(by_alias=True, mode="json")))
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "tasks.tune", "--dashboard", "--port", str(port)], cwd=tmp_path,
                              env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                listed = httpx.get(f"http://127.0.0.1:{port}/api/studies", timeout=2).json()
                break
            except httpx.TransportError:
                assert server.poll() is None and time.monotonic() < deadline, server.communicate()[0]
                time.sleep(0.3)
        assert [s["study_name"] for s in listed["study_summaries"]] == [study]
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_the_dashboard_without_a_study_says_what_to_run(tmp_path: Path, monkeypatch, capsys):
    (tmp_path / "params.yaml").write_text((PROJECT_ROOT / "params.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exited:
        tune.main(["--dashboard"])
    assert exited.value.code == 2 and capsys.readouterr().err.strip().splitlines() == [
        "tune: error: no study yet (.ops/tune/journal.log not found); run make tune first"]


def test_new_data_starts_a_new_study_warm_started_from_the_last_best(tmp_path: Path):
    write_splits(tmp_path, {"train": 6, "val": 3})
    params = make_params(**searching(trials=3, epochs=2))
    before = tune.run(params, tmp_path)
    best_before = sorted((t for t in load(tmp_path, params).trials if t.state == TrialState.COMPLETE),
                         key=lambda t: -t.value)
    write_splits(tmp_path, {"train": 7, "val": 3})  # new images: another split

    after = tune.run(params.model_copy(update={"tune": params.tune.model_copy(update={"trials": 4})}), tmp_path)

    assert after["study"] != before["study"] and after["study"].split("-")[2] == before["study"].split("-")[2]
    trials = load(tmp_path, params).trials
    assert trials[0].user_attrs["recipe"] == "params.yaml"
    warm = [t for t in trials if t.user_attrs.get("recipe", "").startswith(f"warm start: {before['study']} trial ")]
    expected = [t.params for t in best_before if t.params != trials[0].params][:3]
    assert [t.params for t in warm] == expected and [t.number for t in warm] == list(range(1, len(expected) + 1))


@pytest.mark.slow(reason="two spawned search processes, each importing the project and training")
def test_parallel_processes_share_the_budget(tmp_path: Path):
    write_splits(tmp_path, {"train": 6, "val": 3})
    # Trials long enough that the second process (a fresh interpreter) starts before the first ran them all.
    params = make_params(**{**searching(trials=4, epochs=8), "tune": {**searching(4)["tune"], "parallel": 2}})

    summary = tune.run(params, tmp_path)

    trials = load(tmp_path, params).trials
    assert summary["trials"]["complete"] + summary["trials"]["pruned"] in (4, 5)
    assert len({t.user_attrs["pid"] for t in trials}) == 2 and "processes_lost" not in summary
