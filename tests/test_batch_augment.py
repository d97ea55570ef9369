"""Batch augmentation on the device: what each switch does to every image, per-image draws, seeding."""
from __future__ import annotations

import colorsys

import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from tasks.common.config import AugmentParams
from tasks.training.batch_augment import BatchAugment, batch_augmentable, normalize

pytestmark = pytest.mark.data

SIZE = 32
IDENTITY = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # mean, std: outputs stay pixel values in [0, 1]
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# Everything off, and a crop that keeps the whole square image: the transform only resizes.
OFF = {
    "crop_scale": [1.0, 1.0], "crop_ratio": [1.0, 1.0], "hflip": 0.0, "vflip": 0.0, "rotation": 0,
    "color_jitter": {"brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "hue": 0.0},
    "auto_augment": "none", "rand_num_ops": 2, "rand_magnitude": 9, "erasing": 0.0,
    "mixup_alpha": 0.0, "cutmix_alpha": 0.0,
}
NO_JITTER = OFF["color_jitter"]


def params(**values) -> AugmentParams:
    return AugmentParams(**{**OFF, **values})


def augment(images, seed: int = 0, size: int = SIZE, norm=IDENTITY, **values) -> torch.Tensor:
    return BatchAugment(size, params(**values), *norm)(images, torch.Generator().manual_seed(seed))


def textured(n: int = 4, side: int = SIZE, seed: int = 0) -> torch.Tensor:
    """Random uint8 images: asymmetric, so that every operation shows."""
    return torch.randint(0, 256, (n, 3, side, side), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def flat(colour, n: int = 8, side: int = SIZE) -> torch.Tensor:
    return torch.tensor(colour, dtype=torch.uint8).view(1, 3, 1, 1).expand(n, 3, side, side).contiguous()


def copies(image: torch.Tensor, n: int) -> torch.Tensor:
    return image.expand(n, *image.shape[1:]).contiguous()


def test_everything_off_equals_normalize():
    images = textured()
    out = augment(images, norm=IMAGENET)
    assert out.shape == (4, 3, SIZE, SIZE) and out.dtype == torch.float32 and out.device == images.device
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(out, normalize(images, *IMAGENET), atol=1e-5)


def test_everything_off_at_another_size_only_resizes():
    images = textured()
    resized = F.interpolate(images.float(), size=24, mode="bilinear", align_corners=False)
    assert torch.allclose(augment(images, size=24), resized / 255, atol=1e-5)


def test_normalize_scales_and_normalizes_channels_last():
    images = flat((255, 0, 128), n=2, side=5)
    out = normalize(images, *IMAGENET)
    assert out.shape == (2, 3, 5, 5) and out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last)
    mean, std = (torch.tensor(v) for v in IMAGENET)
    assert torch.allclose(out[1, :, 4, 4], (torch.tensor([1.0, 0.0, 128 / 255]) - mean) / std, atol=1e-6)


@pytest.mark.parametrize(("switch", "undo"), [("hflip", lambda x: x.flip(-1)), ("vflip", lambda x: x.flip(-2))])
def test_flips_with_probability_one_mirror_exactly(switch, undo):
    images = textured()
    assert torch.allclose(undo(augment(images, **{switch: 1.0})), augment(images), atol=1e-5)


def test_every_image_gets_its_own_draw_from_the_generator():
    batch = copies(textured(1), 8)
    first = augment(batch, seed=3, crop_scale=[0.2, 0.6])
    assert len({o.numpy().tobytes() for o in first}) == 8  # eight different crops of one image
    assert torch.equal(augment(batch, seed=3, crop_scale=[0.2, 0.6]), first)
    assert not torch.allclose(augment(batch, seed=4, crop_scale=[0.2, 0.6]), first)


def test_global_rng_is_left_alone():
    torch.manual_seed(0)
    before = torch.get_rng_state()
    augment(textured(), crop_scale=[0.2, 0.6], hflip=0.5, rotation=20, erasing=0.5,
            color_jitter={"brightness": 0.3, "contrast": 0.3, "saturation": 0.3, "hue": 0.1})
    assert torch.equal(torch.get_rng_state(), before)


def test_quarter_area_crop_zooms_in_twice_inside_the_image():
    # Red rises by 8 per column and green by 8 per row: a crop of half the side, resized back to the
    # side, rises by 4 per pixel. Bilinear resampling keeps a ramp exact away from the crop border.
    ramp = torch.arange(SIZE) * 8
    image = torch.stack([ramp.expand(SIZE, SIZE), ramp[:, None].expand(SIZE, SIZE), torch.zeros(SIZE, SIZE)])
    out = augment(copies(image.to(torch.uint8)[None], 8), crop_scale=[0.25, 0.25]) * 255
    inner = out[:, :, 1:-1, 1:-1]
    assert torch.allclose(inner[:, 0].diff(dim=-1), torch.tensor(4.0), atol=1e-2)
    assert torch.allclose(inner[:, 1].diff(dim=-2), torch.tensor(4.0), atol=1e-2)
    assert inner[:, 0].diff(dim=-2).abs().max() < 1e-2  # no rotation or shear
    lefts = inner[:, 0, 0, 0]
    assert (lefts >= 0).all() and (lefts + 4 * (SIZE - 3) <= 8 * (SIZE - 1) + 1e-2).all()  # inside the image
    assert len(set(lefts.round().tolist())) > 4  # each image its own place


def test_rotation_fills_corners_with_black_and_keeps_the_centre():
    white = flat((255, 255, 255))
    rotated = augment(white, rotation=180)
    corners = rotated[:, :, [0, 0, -1, -1], [0, -1, 0, -1]].amax(dim=(1, 2))
    assert (corners == 0).sum() >= 7  # black unless an angle is within a few degrees of a right angle
    assert torch.allclose(rotated[:, :, SIZE // 2 - 2:SIZE // 2 + 2, SIZE // 2 - 2:SIZE // 2 + 2], torch.tensor(1.0))
    assert torch.allclose(augment(white, rotation=0), torch.tensor(1.0))


def test_brightness_scales_each_image_by_its_own_factor():
    grey = flat((100, 100, 100))
    out = augment(grey, color_jitter={**NO_JITTER, "brightness": 0.5})
    factors = out.mean(dim=(1, 2, 3)) / (100 / 255)
    assert ((factors >= 0.5 - 1e-5) & (factors <= 1.5 + 1e-5)).all()
    assert len(set(factors.round(decimals=4).tolist())) == 8
    assert torch.allclose(out, out[:, :1, :1, :1].expand_as(out))  # the image stays flat grey


def test_contrast_keeps_the_grey_mean_and_changes_the_spread():
    images = copies(torch.randint(64, 192, (1, 3, SIZE, SIZE), generator=torch.Generator().manual_seed(0),
                                  dtype=torch.uint8), 8)
    out = augment(images, color_jitter={**NO_JITTER, "contrast": 0.5})
    plain = images.float() / 255
    gray = torch.tensor([0.2989, 0.587, 0.114]).view(1, 3, 1, 1)
    assert torch.allclose((out * gray).sum(1).mean((1, 2)), (plain * gray).sum(1).mean((1, 2)), atol=1e-4)
    spread = out.std(dim=(1, 2, 3)) / plain.std(dim=(1, 2, 3))
    assert ((spread > 0.5 - 1e-3) & (spread < 1.5 + 1e-3)).all() and spread.max() - spread.min() > 0.1


def test_saturation_leaves_grey_alone_and_changes_colour():
    grey = copies(textured(1).amin(1, keepdim=True).expand(1, 3, SIZE, SIZE), 8)
    jitter = {**NO_JITTER, "saturation": 0.9}
    # torchvision's grey weights sum to 0.9999, hence the tolerance
    assert torch.allclose(augment(grey, color_jitter=jitter), grey.float() / 255, atol=2e-4)
    colour = copies(textured(1), 8)
    out = augment(colour, color_jitter=jitter)
    assert (out - colour.float() / 255).abs().amax(dim=(1, 2, 3)).min() > 0.01
    assert out.min() >= 0 and out.max() <= 1


def test_hue_turns_red_into_other_colours_of_the_same_value_and_saturation():
    red = flat((255, 0, 0))
    out = augment(red, color_jitter={**NO_JITTER, "hue": 0.5})
    assert torch.allclose(out.amax(1), torch.tensor(1.0), atol=1e-5)  # value kept
    assert torch.allclose(out.amin(1), torch.tensor(0.0), atol=1e-5)  # saturation kept
    assert (out[:, 0] < 0.99).any(dim=(1, 2)).sum() >= 6  # most draws are no longer pure red


def test_hue_matches_torchvision_adjust_hue():
    # The top-left pixel is pure red, so its hue after the shift is the shift itself.
    images = textured(8)
    images[:, :, 0, 0] = torch.tensor([255, 0, 0], dtype=torch.uint8)
    out = augment(images, color_jitter={**NO_JITTER, "hue": 0.4})
    for image, shifted in zip(images, out):
        hue = colorsys.rgb_to_hsv(*shifted[:, 0, 0].tolist())[0]
        expected = TF.adjust_hue(image.float() / 255, (hue + 0.5) % 1.0 - 0.5)
        assert torch.allclose(shifted, expected, atol=1e-4)


def test_erasing_with_probability_one_zeroes_a_rectangle_in_every_image():
    white = flat((255, 255, 255))
    out = augment(white, norm=((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)), erasing=1.0)  # white -> 1, erased -> 0
    erased = (out == 0).all(dim=1)
    assert ((out == 0) | torch.isclose(out, torch.tensor(1.0))).all()
    boxes = set()
    for mask in erased:
        rows, cols = mask.any(dim=1).nonzero().flatten(), mask.any(dim=0).nonzero().flatten()
        assert len(rows) > 0 and not mask.all()
        assert mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all()  # a filled rectangle
        assert mask.sum() == len(rows) * len(cols)
        boxes.add((rows[0].item(), cols[0].item(), len(rows), len(cols)))
    assert len(boxes) > 4
    assert not (augment(white, norm=((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)), erasing=0.0) == 0).any()


ALL_ON = {
    "crop_scale": [0.08, 1.0], "crop_ratio": [0.5, 2.0], "hflip": 0.5, "vflip": 0.5, "rotation": 30,
    "color_jitter": {"brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1}, "erasing": 0.5,
}


@pytest.mark.parametrize(("n", "side", "size"), [(1, 1, 5), (1, 7, 3), (3, 16, 40)])
def test_any_batch_and_image_size(n, side, size):
    out = augment(textured(n, side), size=size, norm=IMAGENET, **ALL_ON)
    assert out.shape == (n, 3, size, size) and out.is_contiguous(memory_format=torch.channels_last)
    assert torch.isfinite(out).all()


def test_rejects_images_that_are_not_square_uint8_batches():
    transform = BatchAugment(SIZE, params(), *IDENTITY)
    with pytest.raises(ValueError, match="expected uint8 images"):
        transform(textured().float(), torch.Generator())
    with pytest.raises(ValueError, match="expected uint8 images"):
        transform(textured()[:, :, :, :20], torch.Generator())


@pytest.mark.parametrize("policy", ["trivial", "rand"])
def test_auto_augment_is_not_batch_augmentable(policy):
    aug = params(**{**ALL_ON, "auto_augment": policy})
    assert not batch_augmentable(aug)
    with pytest.raises(ValueError, match=f"auto_augment={policy} is not supported by batch augmentation"):
        BatchAugment(SIZE, aug, *IDENTITY)


def test_every_other_option_is_batch_augmentable():
    assert batch_augmentable(params()) and batch_augmentable(params(**ALL_ON))
