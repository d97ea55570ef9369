"""params.yaml: the stages' sections, each validated by a pydantic model before the stage runs.

Each section belongs to what reads it. The stages' sections are defined here; `ops`, `tune` and
`service` are defined by their readers (OWNED_ELSEWHERE), so that editing them never re-runs a stage
or invalidates a training checkpoint. A reader parses params.yaml with its own model: the stages'
`Params`, or one extending it. A bad key or value fails with one line naming the key and what is
allowed, never a traceback; a key that moved is read from its old place with a one-line notice.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator, model_validator

PARAMS_FILE = "params.yaml"
# Top-level sections whose models live with their readers, not here.
OWNED_ELSEWHERE = {"ops": "flows/settings.py", "tune": "tasks/tuning/settings.py", "service": "service/settings.py"}
# Keys that moved to the section of what reads them: old -> new. Still read, with a one-line notice.
MOVED = {
    "package.runtime": "evaluate.runtime",
    "package.max_accuracy_drop": "evaluate.max_accuracy_drop",
    "labels.uncertain": "service.uncertain",
}


class UserError(ValueError):
    """A mistake the user can fix (bad path, bad params value, bad data). Printed as one line."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataParams(Section):
    root: str = Field(description="folder of class sub-folders (DVC-tracked)")


class SampleParams(Section):
    out_dir: str


# Expectation names, as listed in validate.warn_only.
CHECKS = (
    "decodable", "allowed_formats", "image_size", "aspect_ratio", "min_images_per_class",
    "max_imbalance", "label_conflict", "duplicate_share", "expected_labels",
)


class ValidateParams(Section):
    max_pixels: int = Field(ge=1, le=1_000_000_000)
    near_duplicate_distance: int = Field(ge=-1, le=16)
    decodable_mostly: float = Field(ge=0.0, le=1.0)
    allowed_formats: list[str]
    min_width: int = Field(ge=1)
    min_height: int = Field(ge=1)
    max_width: int = Field(ge=1)
    max_height: int = Field(ge=1)
    aspect_ratio: tuple[float, float]
    min_images_per_class: int = Field(ge=1)
    max_imbalance: float = Field(ge=1.0)
    max_duplicate_share: float = Field(ge=0.0, le=1.0)
    expected_labels: list[str]
    warn_only: list[Literal[CHECKS]]

    @field_validator("allowed_formats")
    @classmethod
    def _upper(cls, formats: list[str]) -> list[str]:
        return [f.upper() for f in formats]  # PIL names formats in capitals: PNG, JPEG, MPO

    @model_validator(mode="after")
    def _ranges(self) -> "ValidateParams":
        lo, hi = self.aspect_ratio
        if not 0.0 < lo <= hi:
            raise ValueError("aspect_ratio must be [low, high] with 0 < low <= high (width / height)")
        if self.min_width > self.max_width or self.min_height > self.max_height:
            raise ValueError("min_width/min_height must not exceed max_width/max_height")
        return self


class CleanParams(Section):
    drop_exact_duplicates: bool
    drop_near_duplicates: bool
    background: tuple[int, int, int]
    max_side: int = Field(ge=0)

    @field_validator("background")
    @classmethod
    def _rgb(cls, colour: tuple[int, int, int]) -> tuple[int, int, int]:
        if not all(0 <= c <= 255 for c in colour):
            raise ValueError("background must be three 0-255 values, e.g. [255, 255, 255] for white")
        return colour


class SplitParams(Section):
    val: float = Field(gt=0.0, lt=1.0)
    test: float = Field(gt=0.0, lt=1.0)
    seed: int

    @model_validator(mode="after")
    def _leaves_training_data(self) -> "SplitParams":
        if self.val + self.test >= 0.9:
            raise ValueError("val + test must be below 0.9 so that training data remains")
        return self


class ColorJitterParams(Section):
    brightness: float = Field(ge=0.0)
    contrast: float = Field(ge=0.0)
    saturation: float = Field(ge=0.0)
    hue: float = Field(ge=0.0, le=0.5)


class AugmentParams(Section):
    crop_scale: tuple[float, float]
    crop_ratio: tuple[float, float]
    hflip: float = Field(ge=0.0, le=1.0)
    vflip: float = Field(ge=0.0, le=1.0)
    rotation: float = Field(ge=0.0, le=180.0)
    color_jitter: ColorJitterParams
    auto_augment: Literal["none", "trivial", "rand"]
    rand_num_ops: int = Field(ge=1, le=14)
    rand_magnitude: int = Field(ge=0, le=30)  # RandAugment's 31 magnitude bins
    erasing: float = Field(ge=0.0, le=1.0)
    mixup_alpha: float = Field(ge=0.0)
    cutmix_alpha: float = Field(ge=0.0)

    @field_validator("crop_scale")
    @classmethod
    def _scale(cls, pair: tuple[float, float]) -> tuple[float, float]:
        lo, hi = pair
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError("must be [low, high] with 0 < low <= high <= 1 (share of the image area)")
        return pair

    @field_validator("crop_ratio")
    @classmethod
    def _ratio(cls, pair: tuple[float, float]) -> tuple[float, float]:
        lo, hi = pair
        if not 0.0 < lo <= hi:
            raise ValueError("must be [low, high] with 0 < low <= high (width / height), e.g. [0.75, 1.33]")
        return pair


class EarlyStoppingParams(Section):
    metric: Literal["accuracy", "macro_f1", "loss"]
    patience: int = Field(ge=0, description="epochs without improvement before stopping; 0 never stops early")
    min_delta: float = Field(ge=0.0)


class TrainParams(Section):
    backbone: str
    weights: str = Field(description="imagenet | none | path to a local checkpoint")
    image_size: Literal["auto"] | int
    strategy: Literal["linear_probe", "full", "gradual"]
    epochs: int = Field(ge=1)
    freeze_epochs: int = Field(ge=0)
    unfreeze_epochs: int = Field(ge=0)
    layer_decay: float = Field(gt=0.0, le=1.0)
    batch_size: Literal["auto"] | int
    optimizer: Literal["adamw", "sgd"]
    lr: float = Field(gt=0.0)
    weight_decay: float = Field(ge=0.0)
    momentum: float = Field(ge=0.0, lt=1.0)
    schedule: Literal["cosine", "onecycle"]
    warmup_epochs: float = Field(ge=0.0)
    label_smoothing: float = Field(ge=0.0, lt=1.0)
    imbalance: Literal["none", "weighted_loss", "balanced_sampling"]
    ema_decay: float = Field(ge=0.0, lt=1.0)
    grad_clip: float = Field(ge=0.0)
    early_stopping: EarlyStoppingParams
    seed: int
    device: Literal["auto", "cpu", "cuda"]
    processes: Literal["auto"] | int
    nodes: int = Field(ge=1)
    rendezvous: str | None
    input: Literal["auto", "cache", "loader"]
    num_workers: int = Field(ge=0)
    compile: bool
    cuda_graph: bool
    eval_crop_pct: Literal["auto"] | float
    augment: AugmentParams

    @field_validator("image_size", mode="before")
    @classmethod
    def _size(cls, value):
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and 16 <= value <= 1024):
            return value
        raise ValueError("must be auto (the backbone's own input size) or a whole number of pixels from 16 to 1024")

    @field_validator("batch_size", mode="before")
    @classmethod
    def _batch(cls, value):
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            return value
        raise ValueError("must be auto (the largest batch that fits the GPU) or a whole number >= 1")

    @field_validator("processes", mode="before")
    @classmethod
    def _processes(cls, value):
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            return value
        raise ValueError("must be auto (one process per visible GPU) or a whole number >= 1")

    @field_validator("rendezvous")
    @classmethod
    def _rendezvous(cls, value):
        host, _, port = (value or "").rpartition(":")
        if value is None or (host and port.isdigit()):
            return value
        raise ValueError("must be HOST:PORT of the first node (e.g. node0.example:29500), or null on one machine")

    @model_validator(mode="after")
    def _several_nodes_meet(self):
        if self.nodes > 1 and self.rendezvous is None:
            raise ValueError("nodes above 1 need rendezvous: HOST:PORT of the first node")
        return self

    @field_validator("eval_crop_pct", mode="before")
    @classmethod
    def _crop_share(cls, value):
        if value == "auto" or (isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 < value <= 1.0):
            return value
        raise ValueError("must be auto (the backbone's own crop) or a share in (0, 1], e.g. 1.0 for no crop")

    @model_validator(mode="after")
    def _phases_fit(self) -> "TrainParams":
        if self.strategy == "gradual" and self.freeze_epochs + self.unfreeze_epochs >= self.epochs:
            raise ValueError("gradual: freeze_epochs + unfreeze_epochs must be below epochs, "
                             "so that the whole network trains at the end")
        return self


class LabelsParams(Section):
    folds: StrictInt = Field(ge=2, le=20, description="cross-validation folds over train + val")
    strategy: Literal["linear_probe", "full", "gradual"]
    epochs: StrictInt = Field(ge=1, description="epochs of each fold's fine-tune")
    method: Literal["prune_by_noise_rate", "prune_by_class", "both", "confident_learning", "predicted_neq_given"]
    rank_by: Literal["self_confidence", "normalized_margin", "confidence_weighted_entropy"]
    warn_share: float = Field(ge=0.0, le=1.0, description="a larger share of suspect labels is reported as a warning")
    max_share: float = Field(ge=0.0, le=1.0, description="a larger share of suspect labels stops the pipeline")
    shown: StrictInt = Field(ge=0, description="suspects shown with thumbnails on the page")
    review_dir: str = Field(description="the review log and the images reviewers rejected (DVC-tracked)")

    @model_validator(mode="after")
    def _shares(self) -> "LabelsParams":
        if self.warn_share > self.max_share:
            raise ValueError("warn_share must not exceed max_share")
        return self


class InferenceParams(Section):
    temperature_scaling: bool
    tta: Literal["none", "hflip"]
    device: Literal["auto", "cpu", "cuda"] = Field(description="where evaluate, gate and monitor run the network")


class EvaluateParams(Section):
    batch_size: int = Field(ge=1)
    top_k: int = Field(ge=1)
    calibration_bins: int = Field(ge=2, le=100)
    worst_mistakes: int = Field(ge=0, le=100)
    slice_buckets: int = Field(ge=1, le=10)
    runtime: Literal["auto", "torch", "onnx", "onnx-int8"] = Field(
        "auto", description="what runs the served network; auto: the fastest measured within max_accuracy_drop")
    max_accuracy_drop: float = Field(
        0.3, ge=0.0, le=100.0, description="test accuracy points auto may give up against PyTorch for speed")


class GateParams(Section):
    margin: float = Field(ge=0.0, le=1.0, description="accuracy the challenger must gain over the champion")
    alpha: float = Field(gt=0.0, lt=1.0, description="significance level of McNemar's exact test")
    min_test_images: StrictInt = Field(
        default=100, ge=1, description="test images neither model trained or validated on, below which the gate refuses")


class PackageParams(Section):
    model_name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")


class MonitorParams(Section):
    traffic_dir: str
    min_traffic: int = Field(ge=1, description="fewer logged images: not enough traffic to judge")
    detector: Literal["bonferroni", "share"]
    alpha: float = Field(gt=0.0, lt=1.0, description="the chance that an unshifted window is called drifted")
    drift_share: float = Field(gt=0.0, le=1.0)


class Params(Section):
    """The stages' sections. Flows, the service and the recipe search extend it with their own."""

    data: DataParams
    sample: SampleParams
    validate_: ValidateParams = Field(alias="validate")
    clean: CleanParams
    split: SplitParams
    labels: LabelsParams
    train: TrainParams
    inference: InferenceParams
    evaluate: EvaluateParams
    gate: GateParams
    package: PackageParams
    monitor: MonitorParams

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


Model = TypeVar("Model", bound=BaseModel)
_told: set[str] = set()  # moved keys already announced by this process


def _describe(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"])
    key = key.replace("validate_", "validate")
    msg = first["msg"].removeprefix("Value error, ")
    if not key:  # a check across sections names its own keys
        return f"{source}: {msg}"
    if first["type"] == "extra_forbidden":
        msg = "unknown key; check the spelling against params.yaml in the project template"
    elif "input" in first and not isinstance(first["input"], dict):
        msg = f"{msg} (got {first['input']!r})"
    more = f" (+{len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"{source}: {key}: {msg}{more}"


def _moved_keys(raw: dict, source: str) -> dict:
    """raw with each moved key read at its new place (unless that is set too), announced once."""
    raw = {name: dict(section) if isinstance(section, dict) else section for name, section in raw.items()}
    for old, new in MOVED.items():
        (old_section, old_key), (new_section, new_key) = old.split("."), new.split(".")
        if not isinstance(raw.get(old_section), dict) or old_key not in raw[old_section]:
            continue
        value = raw[old_section].pop(old_key)
        target = raw.setdefault(new_section, {})
        if isinstance(target, dict) and new_key not in target:
            target[new_key] = value
        if old not in _told:
            _told.add(old)
            print(f"{source}: {old} is now {new}; rename it (its value is used meanwhile)", file=sys.stderr)
    inference, train = raw.get("inference"), raw.get("train")
    if isinstance(inference, dict) and "device" not in inference and isinstance(train, dict) and "device" in train:
        inference["device"] = train["device"]  # before inference.device, scoring ran where training did
        if "inference.device" not in _told:
            _told.add("inference.device")
            print(f"{source}: inference.device is not set; scoring uses train.device ({train['device']}) as "
                  "before; add inference.device", file=sys.stderr)
    return raw


def _sections(model: type[BaseModel]) -> set[str]:
    return {field.alias or name for name, field in model.model_fields.items()}


def parse_params(raw: dict, source: str = PARAMS_FILE, model: type[Model] = Params) -> Model:
    """Validate the sections `model` declares; raise UserError with one line on the first problem.

    Sections owned by other readers (OWNED_ELSEWHERE) are left to them; any other unknown one fails.
    """
    if not isinstance(raw, dict):
        raise UserError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    raw = _moved_keys(raw, source)
    declared = _sections(model)
    unknown = [name for name in raw if name not in declared | _sections(Params) | set(OWNED_ELSEWHERE)]
    if unknown:
        raise UserError(f"{source}: {unknown[0]}: unknown key; check the spelling against params.yaml in the project "
                        "template")
    try:
        return model.model_validate({name: value for name, value in raw.items() if name in declared})
    except ValidationError as err:
        raise UserError(_describe(err, source)) from None


def load_params(path: str | Path = PARAMS_FILE, model: type[Model] = Params) -> Model:
    """params.yaml validated by `model`: the stages' Params, or a reader's own extension of it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: not found; run from the project root or pass the params file")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise UserError(f"{path}: not valid YAML ({err.__class__.__name__}: {str(err).splitlines()[0]})")
    return parse_params(raw, str(path), model)
