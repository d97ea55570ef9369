"""params.yaml: one section per stage, each validated by a pydantic model before the stage runs.

A bad key or value fails with one line naming the key and what is allowed, never a traceback.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

PARAMS_FILE = "params.yaml"


class UserError(ValueError):
    """A mistake the user can fix (bad path, bad params value, bad data). Printed as one line."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataParams(Section):
    root: str = Field(description="folder of class sub-folders (DVC-tracked)")


class SampleParams(Section):
    out_dir: str


class ValidateParams(Section):
    decodable_mostly: float = Field(ge=0.0, le=1.0)
    allowed_formats: list[str]
    min_width: int = Field(ge=1)
    min_height: int = Field(ge=1)
    min_images_per_class: int = Field(ge=1)
    warn_only: list[Literal["decodable", "allowed_formats", "min_size", "min_images_per_class"]]

    @field_validator("allowed_formats")
    @classmethod
    def _upper(cls, formats: list[str]) -> list[str]:
        return [f.upper() for f in formats]  # PIL names formats in capitals: PNG, JPEG, MPO


class CleanParams(Section):
    drop_exact_duplicates: bool


class SplitParams(Section):
    val: float = Field(gt=0.0, lt=1.0)
    test: float = Field(gt=0.0, lt=1.0)
    seed: int

    @model_validator(mode="after")
    def _leaves_training_data(self) -> "SplitParams":
        if self.val + self.test >= 0.9:
            raise ValueError("val + test must be below 0.9 so that training data remains")
        return self


class AugmentParams(Section):
    crop_scale: tuple[float, float]
    hflip: float = Field(ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _ordered(self) -> "AugmentParams":
        lo, hi = self.crop_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError("crop_scale must be [low, high] with 0 < low <= high <= 1")
        return self


class TrainParams(Section):
    backbone: str
    weights: str = Field(description="imagenet | none | path to a local checkpoint")
    image_size: int = Field(ge=16, le=1024)
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    lr: float = Field(gt=0.0)
    weight_decay: float = Field(ge=0.0)
    seed: int
    device: Literal["auto", "cpu", "cuda"]
    num_workers: int = Field(ge=0)
    augment: AugmentParams


class EvaluateParams(Section):
    batch_size: int = Field(ge=1)


class PackageParams(Section):
    model_name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")


class MonitorParams(Section):
    traffic_dir: str
    min_traffic: int = Field(ge=1, description="fewer logged images: compare the test split")
    drift_share: float = Field(gt=0.0, le=1.0)


class Params(Section):
    data: DataParams
    sample: SampleParams
    validate_: ValidateParams = Field(alias="validate")
    clean: CleanParams
    split: SplitParams
    train: TrainParams
    evaluate: EvaluateParams
    package: PackageParams
    monitor: MonitorParams

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _describe(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "(top level)"
    key = key.replace("validate_", "validate")
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key; check the spelling against params.yaml in the project template"
    elif "input" in first and not isinstance(first["input"], dict):
        msg = f"{msg} (got {first['input']!r})"
    more = f" (+{len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"{source}: {key}: {msg}{more}"


def parse_params(raw: dict, source: str = PARAMS_FILE) -> Params:
    """Validate a params mapping; raise UserError with one line on the first problem."""
    if not isinstance(raw, dict):
        raise UserError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise UserError(_describe(err, source)) from None


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: not found; run from the project root or pass the params file")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise UserError(f"{path}: not valid YAML ({err.__class__.__name__}: {str(err).splitlines()[0]})")
    return parse_params(raw, str(path))
