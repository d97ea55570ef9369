"""The search space of `tune.space`: which train.* settings a study varies, and over what.

    tune:
      space:
        train.lr: {low: 0.0003, high: 0.01, log: true}     # a range: float, or int: true; log: true
        train.strategy: [linear_probe, full, gradual]       # a list of choices
        train.augment.mixup_alpha: [0.0, 0.2]               # nested keys too

Every key must name a train setting, and every value a study may pick must be one the train
section accepts, so a trial never fails on a recipe params.yaml would refuse. `searched` is the space
a study searches, params.yaml's own values in it; `recipe` gives the train section with one trial's
values; `suggest` asks an Optuna trial for them.
"""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from tasks.common.config import PARAMS_FILE, TrainParams, UserError
from tasks.tuning.settings import TuningParams

PREFIX = "train."


class Range(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    low: float
    high: float
    log: bool = False
    int: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> "Range":
        if self.low > self.high:
            raise ValueError(f"low ({self.low:g}) is above high ({self.high:g})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range must stay above 0 (low is {self.low:g})")
        return self


Dimension = Range | list


def dimension(key: str, value) -> Dimension:
    """A space entry as written in params.yaml: a list of choices, or a mapping read as a Range."""
    if isinstance(value, list):
        if not value:
            raise ValueError(f"{key}: an empty list of choices")
        return value
    if isinstance(value, dict):
        try:
            return Range.model_validate(value)
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ValueError(f"{key}: {where + ': ' if where else ''}{first['msg'].removeprefix('Value error, ')}; "
                             "a range is {low, high} with optional log: true, int: true") from None
    raise ValueError(f"{key}: must be a list of choices or a range {{low, high}} (got {value!r})")


def value_at(train: dict, key: str, default=KeyError):
    """The value of `key` ("train.augment.mixup_alpha") in a train section as a dict."""
    node = train
    for part in key.removeprefix(PREFIX).split("."):
        if not isinstance(node, dict) or part not in node:
            if default is KeyError:
                raise KeyError(key)
            return default
        node = node[part]
    return node


def recipe(train, values: dict[str, object]):
    """The train section (a TrainParams) with `values` ({"train.lr": 0.001, ...}) set; ValueError
    naming the first setting the train section refuses."""
    raw = train.model_dump()
    for key, value in values.items():
        *path, leaf = key.removeprefix(PREFIX).split(".")
        node = raw
        for part in path:
            node = node[part]
        node[leaf] = value
    try:
        return type(train).model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        where = PREFIX + ".".join(str(p) for p in first["loc"])
        raise ValueError(f"{where}: {first['msg'].removeprefix('Value error, ')} (got {first.get('input')!r})") from None


def check_space(space: dict[str, Dimension], train) -> None:
    """ValueError with one line for a key that is no train setting, or a value the train section
    refuses (both ends of a range, every choice)."""
    settings = train.model_dump()
    for key, dimension in space.items():
        if not key.startswith(PREFIX) or not _is_setting(settings, key.removeprefix(PREFIX).split(".")):
            raise ValueError(f"{key} is not a train setting; name one as train.<key>, e.g. train.lr")
        values = dimension if isinstance(dimension, list) else [dimension.low, dimension.high]
        for value in values:
            if isinstance(dimension, Range) and dimension.int:
                value = round(value)
            try:
                recipe(train, {key: value})
            except ValueError as err:
                raise ValueError(f"{key}: {value!r} is not a value the train section accepts ({err})") from None


def _is_setting(settings: dict, path: list[str]) -> bool:
    node = settings
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return not isinstance(node, dict)


def suggest(trial, space: dict[str, Dimension]) -> dict[str, object]:
    """One trial's values: Optuna's TPE picks each from its range or choices."""
    values = {}
    for key, dimension in space.items():
        if isinstance(dimension, list):
            values[key] = trial.suggest_categorical(key, dimension)
        elif dimension.int:
            values[key] = trial.suggest_int(key, round(dimension.low), round(dimension.high), log=dimension.log)
        else:
            values[key] = trial.suggest_float(key, dimension.low, dimension.high, log=dimension.log)
    return values


def parse_space(space: dict, train: TrainParams, source: str = PARAMS_FILE) -> dict[str, Dimension]:
    """tune.space as dimensions, checked against the train section; UserError with one line."""
    try:
        dimensions = {str(key): dimension(str(key), value) for key, value in space.items()}
        check_space(dimensions, train)
    except ValueError as err:
        raise UserError(f"{source}: tune.space: {err}") from None
    return dimensions


def searched(params: TuningParams) -> dict[str, Dimension]:
    """tune.space, checked, with params.yaml's own value added to each list of choices: trial 0
    measures the written recipe, so it must be a value the study can hold."""
    space = parse_space(params.tune.space, params.train)
    written = current_values(params, space)
    return {key: [*dim, written[key]] if isinstance(dim, list) and written[key] not in dim else dim
            for key, dim in space.items()}


def current_values(params: TuningParams, space: dict) -> dict:
    """The values params.yaml's recipe has for the keys of the space."""
    train = params.train.model_dump()
    return {key: value_at(train, key) for key in space}


def in_space(values: dict, space: dict[str, Dimension]) -> bool:
    """Whether a previous study's trial can start this one: the same keys, every value allowed."""
    if set(values) != set(space):
        return False
    for key, value in values.items():
        allowed = space[key]
        if isinstance(allowed, list) and value not in allowed:
            return False
        if not isinstance(allowed, list) and not allowed.low <= value <= allowed.high:
            return False
    return True
