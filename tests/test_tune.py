"""The recipe search: its search space refused in one line when it names what the train section
would refuse, and a real Optuna study on a tiny split that starts from params.yaml's recipe and
continues where it stopped."""
from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import yaml

from tasks import tune
from tasks.common.config import UserError, load_params, parse_params
from tasks.tuning.space import parse_space
from tests.conftest import PROJECT_ROOT, make_params, write_splits

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
    params = load_params(PROJECT_ROOT / "params.yaml")
    assert set(parse_space(params.tune.space, params.train)) == set(params.tune.space)
    nested = parse_space({"train.augment.mixup_alpha": [0.0, 0.2]}, params.train)
    assert nested == {"train.augment.mixup_alpha": [0.0, 0.2]}
    raw = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    with pytest.raises(UserError, match="tune.trials: Input should be greater than or equal to 1"):
        parse_params({**raw, "tune": {**raw["tune"], "trials": 0}})


def test_a_study_starts_from_the_written_recipe_and_continues_where_it_stopped(tmp_path: Path):
    write_splits(tmp_path, {"train": 8, "val": 4})
    space = {"train.lr": {"low": 0.0005, "high": 0.02, "log": True}, "train.strategy": ["linear_probe", "full"]}
    params = make_params(train={**FAST, "lr": 0.002, "strategy": "full"},
                         tune={"trials": 3, "minutes": 0, "parallel": 1, "space": space})

    first = tune.run(params, tmp_path)

    assert first["trials"]["complete"] + first["trials"]["pruned"] == 3 and first["trials"]["running"] == 0
    assert first["params_yaml_recipe"]["number"] == 0
    report = json.loads((tmp_path / tune.REPORT_JSON).read_text())
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
    stored = optuna.load_study(study_name=first["study"], storage=tune.open_storage(tmp_path, params)[0])
    assert [t.number for t in stored.trials] == [0, 1, 2, 3]
    assert len({tuple(sorted(t.params.items())) for t in stored.trials}) == 4  # the second run drew anew
    assert (tmp_path / ".ops/tune/journal.log").is_file()
