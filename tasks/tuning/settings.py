"""params.yaml's `tune` section, validated here because only the recipe search reads it.

No stage imports this module, so editing it re-runs no stage and keeps a training checkpoint
resumable. `TuningParams` is what the search reads: the stages' sections (the recipe it varies is
`train`), `tune`, and from `ops` only `home`, where the study's journal lives; flows/settings.py
validates the rest of `ops`.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from tasks.common.config import Params, Section


class TuneParams(Section):
    trials: StrictInt = Field(ge=1, description="the study's budget of finished trials")
    minutes: float = Field(ge=0, description="this command's time budget (0: none)")
    parallel: StrictInt = Field(ge=1, description="search processes side by side on this machine")
    folds: StrictInt = Field(ge=1, description="1: score on val; K > 1: mean of K folds of train and val")
    pruner: Literal["median", "hyperband"]
    seed: int
    space: dict[str, Any] = Field(min_length=1, description="train.* keys and their ranges or choices; "
                                                          "checked against the train section by tasks/tuning/space.py")


class OpsHome(BaseModel):
    """The one `ops` key the search reads."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    home: str


class TuningParams(Params):
    tune: TuneParams
    ops: OpsHome
