"""Augmentation: params checks, what each switch does to an image, mixup/cutmix, the preview stage."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from tasks import augment, train
from tasks.common.config import UserError, parse_params
from tasks.model.bundle import load_bundle
from tasks.model.transforms import batch_mix, eval_transform, train_transform
from tests.conftest import PROJECT_ROOT, write_image_set

pytestmark = pytest.mark.data

SIZE = 32
IDENTITY = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # mean, std: outputs stay pixel values in [0, 1]
# Everything off, and a crop that keeps the whole square image: the transform only resizes.
OFF = {
    "crop_scale": [1.0, 1.0], "crop_ratio": [1.0, 1.0], "hflip": 0.0, "vflip": 0.0, "rotation": 0,
    "color_jitter": {"brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "hue": 0.0},
    "auto_augment": "none", "erasing": 0.0, "mixup_alpha": 0.0, "cutmix_alpha": 0.0,
}


def params_with(augment: dict | None = None, **train_values):
    """Project params.yaml with train values and train.augment values overridden."""
    raw = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    raw["train"].update(train_values)
    raw["train"]["augment"].update(augment or {})
    return parse_params(raw)


def transform_with(**augment_values):
    aug = params_with({**OFF, **augment_values}).train.augment
    return train_transform(SIZE, *IDENTITY, aug)


def textured_image(seed: int = 0) -> Image.Image:
    """An asymmetric RGB image: a colour gradient plus noise, so that every operation shows."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, SIZE)
    pixels = np.stack([np.tile(ramp, (SIZE, 1)), np.tile(ramp[:, None], (1, SIZE)), np.full((SIZE, SIZE), 90.0)], -1)
    return Image.fromarray(np.clip(pixels + rng.normal(0, 20, pixels.shape), 0, 255).astype(np.uint8))


@pytest.mark.parametrize(
    ("augment_values", "train_values", "expected"),
    [
        ({"crop_scale": [0.0, 1.0]}, {}, "train.augment.crop_scale: must be [low, high] with 0 < low"),
        ({"crop_scale": [0.9, 0.5]}, {}, "train.augment.crop_scale: must be [low, high] with 0 < low"),
        ({"crop_ratio": [1.5, 1.0]}, {}, "train.augment.crop_ratio: must be [low, high]"),
        ({"hflip": 1.5}, {}, "train.augment.hflip: Input should be less than or equal to 1"),
        ({"rotation": -10}, {}, "train.augment.rotation: Input should be greater than or equal to 0"),
        ({"color_jitter": {"brightness": 0.2, "contrast": 0, "saturation": 0, "hue": 0.7}}, {},
         "train.augment.color_jitter.hue: Input should be less than or equal to 0.5"),
        ({"color_jitter": {"brightness": 0.2}}, {}, "train.augment.color_jitter.contrast: Field required"),
        ({"auto_augment": "auto"}, {}, "train.augment.auto_augment: Input should be 'none', 'trivial' or 'rand'"),
        ({"rand_magnitude": 31}, {}, "train.augment.rand_magnitude: Input should be less than or equal to 30"),
        ({"erasing": -0.1}, {}, "train.augment.erasing: Input should be greater than or equal to 0"),
        ({"mixup_alpha": -1}, {}, "train.augment.mixup_alpha: Input should be greater than or equal to 0"),
        ({"mixup": 0.2}, {}, "train.augment.mixup: unknown key"),
        ({}, {"eval_crop_pct": 0}, "train.eval_crop_pct: must be auto (the backbone's own crop) or a"),
        ({}, {"eval_crop_pct": 1.2}, "train.eval_crop_pct: must be auto (the backbone"),
        ({}, {"eval_crop_pct": "full"}, "train.eval_crop_pct: must be auto (the backbone"),
    ],
)
def test_bad_augment_params_fail_with_one_line(augment_values, train_values, expected):
    with pytest.raises(UserError) as info:
        params_with(augment_values, **train_values)
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_eval_crop_pct_takes_auto_or_a_share():
    assert params_with(eval_crop_pct="auto").train.eval_crop_pct == "auto"
    assert params_with(eval_crop_pct=0.875).train.eval_crop_pct == 0.875


def test_all_switches_off_only_resizes():
    image = textured_image()
    off = transform_with()(image)
    assert off.shape == (3, SIZE, SIZE) and off.dtype == torch.float32
    assert torch.allclose(off, eval_transform(SIZE, *IDENTITY, crop_pct=1.0)(image))


@pytest.mark.parametrize(("switch", "undo"), [("hflip", lambda x: x.flip(-1)), ("vflip", lambda x: x.flip(-2))])
def test_flips_with_probability_one_always_flip(switch, undo):
    image = textured_image()
    off = transform_with()(image)
    assert torch.equal(undo(transform_with(**{switch: 1.0})(image)), off)


@pytest.mark.parametrize(
    "augment_values",
    [
        {"rotation": 30},
        {"color_jitter": {"brightness": 0.5, "contrast": 0.5, "saturation": 0.5, "hue": 0.1}},
        {"crop_scale": [0.3, 0.6], "crop_ratio": [0.5, 2.0]},
    ],
    ids=["rotation", "color_jitter", "crop"],
)
def test_each_switch_changes_the_image(augment_values):
    image = textured_image()
    off = transform_with()(image)
    torch.manual_seed(0)
    changed = transform_with(**augment_values)(image)
    assert changed.shape == off.shape and not torch.allclose(changed, off, atol=0.02)


def test_erasing_with_probability_one_erases_a_rectangle():
    white = Image.new("RGB", (SIZE, SIZE), (255, 255, 255))
    torch.manual_seed(0)
    erased = transform_with(erasing=1.0)(white)
    assert (erased == 0).all(dim=0).sum() > 0  # erased to 0 in normalized space: the mean colour
    assert (erased == 1).all(dim=0).sum() > 0  # the rest untouched


@pytest.mark.parametrize("policy", ["trivial", "rand"])
def test_auto_augment_policies_vary_with_the_seed(policy):
    image = textured_image()
    transform = transform_with(auto_augment=policy, rand_num_ops=2, rand_magnitude=15)
    draws = []
    for seed in range(6):
        torch.manual_seed(seed)
        draws.append(transform(image))
    assert all(d.shape == (3, SIZE, SIZE) and d.dtype == torch.float32 for d in draws)
    assert all(0.0 <= d.min() and d.max() <= 1.0 for d in draws)
    assert len({d.numpy().tobytes() for d in draws}) >= 4  # a draw may repeat (identity op), most differ


def framed_image(side: int = 32, frame: int = 4) -> Image.Image:
    """White frame `frame` pixels wide around a black square."""
    pixels = np.full((side, side, 3), 255, dtype=np.uint8)
    pixels[frame:-frame, frame:-frame] = 0
    return Image.fromarray(pixels)


def test_eval_transform_crops_the_share_the_backbone_asks_for():
    whole = eval_transform(SIZE, *IDENTITY, crop_pct=1.0)(framed_image())
    assert whole.shape == (3, SIZE, SIZE)
    assert torch.allclose(whole[:, 0, 0], torch.ones(3))  # the frame is kept
    centre = eval_transform(SIZE, *IDENTITY, crop_pct=0.5)(framed_image())  # resize to 64, keep the middle 32
    assert centre.shape == (3, SIZE, SIZE) and centre.max() < 0.01  # only the black interior remains


def test_eval_transform_resizes_the_short_side_then_crops_a_square():
    wide = Image.new("RGB", (40, 20), (10, 200, 30))
    out = eval_transform(16, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), crop_pct=0.875)(wide)
    assert out.shape == (3, 16, 16)
    assert torch.allclose(out[:, 8, 8], torch.tensor([10, 200, 30]) / 127.5 - 1, atol=0.01)


def test_batch_mix_is_off_unless_an_alpha_is_set():
    assert batch_mix(params_with(OFF).train.augment, num_classes=3) is None


@pytest.mark.parametrize(
    "alphas",
    [{"mixup_alpha": 1.0}, {"cutmix_alpha": 1.0}, {"mixup_alpha": 0.4, "cutmix_alpha": 1.0}],
    ids=["mixup", "cutmix", "both"],
)
def test_batch_mix_gives_soft_targets_that_sum_to_one(alphas):
    mix = batch_mix(params_with({**OFF, **alphas}).train.augment, num_classes=5)
    images, labels = torch.rand(8, 3, SIZE, SIZE), torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
    mixed_any = False
    for seed in range(4):
        torch.manual_seed(seed)
        mixed, targets = mix(images, labels)
        assert mixed.shape == images.shape and targets.shape == (8, 5)
        assert torch.allclose(targets.sum(1), torch.ones(8))
        mixed_any |= bool(((targets > 0).sum(1) == 2).any())
    assert mixed_any


def write_train_split(workdir, classes: dict[str, int], names=("train",)) -> None:
    """Tiny class images and data/split/<name>.csv (path, label, file) for each name."""
    paths = write_image_set(workdir / "images", classes, size=16)
    frame = pd.DataFrame({
        "path": [f"{p.parent.name}/{p.name}" for p in paths],
        "label": [p.parent.name for p in paths],
        "file": [str(p.relative_to(workdir)) for p in paths],
    })
    (workdir / "data/split").mkdir(parents=True, exist_ok=True)
    for name in names:
        frame.to_csv(workdir / f"data/split/{name}.csv", index=False)


def test_preview_draws_every_training_image_row_and_a_mixed_row(tmp_path):
    write_train_split(tmp_path, {"cat": 4, "dog": 4, "fox": 4})
    png = tmp_path / augment.PREVIEW_PNG

    summary = augment.run(params_with(), tmp_path)
    assert summary == {"images": 8, "rows": 5, "mixed": False, "preview": str(augment.PREVIEW_PNG)}
    assert Image.open(png).size == (960, 640)  # 8 columns and 5 rows of 1.2 in, a 0.4 in title, at 100 dpi
    first = png.read_bytes()
    augment.run(params_with(), tmp_path)
    assert png.read_bytes() == first  # seeded

    summary = augment.run(params_with({"mixup_alpha": 0.4, "cutmix_alpha": 1.0, "auto_augment": "trivial"}), tmp_path)
    assert summary["mixed"] and summary["rows"] == 6
    assert Image.open(png).size == (960, 760)


def test_preview_needs_the_train_split(tmp_path):
    with pytest.raises(UserError, match="data/split/train.csv not found; run the split stage first"):
        augment.run(params_with(), tmp_path)


def test_train_with_mixup_and_the_backbone_crop_writes_it_to_the_bundle(tmp_path):
    write_train_split(tmp_path, {"cat": 6, "dog": 6}, names=("train", "val"))
    params = params_with(
        {"mixup_alpha": 0.4, "cutmix_alpha": 1.0, "auto_augment": "rand", "erasing": 0.5},
        eval_crop_pct="auto", epochs=1, batch_size=4,
    )
    train.run(params, tmp_path)
    history = pd.read_csv(tmp_path / train.HISTORY_CSV)
    assert np.isfinite(history["train_loss"]).all() and history["train_acc"].between(0, 1).all()
    meta = json.loads((tmp_path / "models/model.json").read_text())
    assert meta["crop_pct"] == 0.875  # tf_efficientnet_lite0's own crop_pct
    assert load_bundle(tmp_path / "models").crop_pct == 0.875
