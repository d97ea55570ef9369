"""torchvision transforms v2: random augmentation for training, a fixed resize and crop for everything else.

The augment stage (`python -m tasks.augment`) draws the training augmentation as it is configured:

    reports/augment/preview.png   training images as evaluated, four augmented draws of each, and a
                                  mixed batch when mixup or cutmix is on

The service imports this module for `eval_transform`, so the preview's own dependencies (matplotlib,
pandas through tasks.train) are imported only when the stage runs.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torchvision.transforms import InterpolationMode, v2

from tasks.backbones import input_config, resolve_inputs
from tasks.batch_augment import BatchAugment, uses_image_cache
from tasks.cli import run_stage
from tasks.config import AugmentParams, Params
from tasks.image_cache import cache_side, square_pixels
from tasks.images import open_rgb

PREVIEW_PNG = Path("reports/augment/preview.png")
PREVIEW_IMAGES = 8  # columns: training images, one class each as far as the classes go
PREVIEW_DRAWS = 4  # rows of augmented draws of every image
CELL_INCHES = 1.2  # one image cell of the preview
HEADER_INCHES = 0.4  # title line
DPI = 100


def eval_transform(size: int, mean, std, crop_pct: float) -> v2.Compose:
    """Resize the short side to size / crop_pct, centre-crop `size`, scale to [0, 1], normalize.

    This is how the backbone's pretrained weights were evaluated (crop_pct 0.875 for most ImageNet
    models); training, evaluation, monitoring and the service all preprocess through it.
    """
    return v2.Compose([
        v2.ToImage(),
        v2.Resize(round(size / crop_pct), antialias=True),
        v2.CenterCrop(size),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(mean), std=list(std)),
    ])


def _auto_augment(aug: AugmentParams) -> v2.Transform | None:
    if aug.auto_augment == "trivial":
        return v2.TrivialAugmentWide()
    if aug.auto_augment == "rand":
        return v2.RandAugment(num_ops=aug.rand_num_ops, magnitude=aug.rand_magnitude)
    return None


def train_transform(size: int, mean, std, aug: AugmentParams) -> v2.Compose:
    """The random training pipeline of `train.augment`; steps that are switched off are left out.

    Geometry and colour run on uint8 images, as TrivialAugment and RandAugment expect; erasing runs
    last, on the normalized tensor, so erased pixels hold the dataset mean.
    """
    jitter = aug.color_jitter.model_dump()
    steps = [
        v2.ToImage(),
        v2.RandomResizedCrop(size, scale=aug.crop_scale, ratio=aug.crop_ratio, antialias=True),
        v2.RandomHorizontalFlip(aug.hflip) if aug.hflip else None,
        v2.RandomVerticalFlip(aug.vflip) if aug.vflip else None,
        v2.RandomRotation(aug.rotation, interpolation=InterpolationMode.BILINEAR) if aug.rotation else None,
        v2.ColorJitter(**jitter) if any(jitter.values()) else None,
        _auto_augment(aug),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(mean), std=list(std)),
        v2.RandomErasing(aug.erasing) if aug.erasing else None,
    ]
    return v2.Compose([step for step in steps if step is not None])


def batch_mix(aug: AugmentParams, num_classes: int) -> v2.Transform | None:
    """MixUp and/or CutMix for a whole batch, or None when both are off.

    Called as `images, targets = mix(images, labels)`: int labels (N,) become soft targets (N, C)
    that sum to 1. With both on, each batch gets one of the two at random.
    """
    mixes = []
    if aug.mixup_alpha > 0:
        mixes.append(v2.MixUp(alpha=aug.mixup_alpha, num_classes=num_classes))
    if aug.cutmix_alpha > 0:
        mixes.append(v2.CutMix(alpha=aug.cutmix_alpha, num_classes=num_classes))
    if not mixes:
        return None
    return mixes[0] if len(mixes) == 1 else v2.RandomChoice(mixes)


def pick_images(frame, count: int, seed: int):
    """`count` rows of a split, seeded, one per class before any class repeats."""
    shuffled = frame.sample(frac=1.0, random_state=seed)
    rank = shuffled.groupby("label").cumcount()
    return shuffled.assign(_rank=rank).sort_values(["_rank", "label"], kind="stable").head(count)


def _viewable(batch: torch.Tensor, mean, std) -> list:
    """Undo Normalize so that the preview shows the colours a person would see (HWC, 0-1)."""
    mean, std = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    return list((batch * std + mean).clamp(0, 1).permute(0, 2, 3, 1).numpy())


def _mix_caption(soft: torch.Tensor, labels: list[str]) -> str:
    weights, classes = soft.topk(2)
    return " + ".join(f"{labels[c]} {w:.2f}" for w, c in zip(weights.tolist(), classes.tolist()) if w > 0.005)


def save_grid(rows: dict[str, list], captions: dict[str, list[str]], title: str, out: Path) -> None:
    """One row of images per entry of `rows`, a caption over every image; fixed size in pixels."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    columns = max(len(images) for images in rows.values())
    size = (columns * CELL_INCHES, len(rows) * CELL_INCHES + HEADER_INCHES)
    fig, axes = plt.subplots(len(rows), columns, figsize=size, squeeze=False, layout="constrained")
    for ax_row, (name, images) in zip(axes, rows.items()):
        for ax, image, caption in zip(ax_row, images, captions[name]):
            ax.imshow(image, interpolation="nearest")  # show the real pixels of small images
            ax.set_title(caption, fontsize=7, pad=2)
        for ax in ax_row:
            ax.set_xticks([])
            ax.set_yticks([])
        ax_row[0].set_ylabel(name, fontsize=8)
    fig.suptitle(title, fontsize=9)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI)
    plt.close(fig)


def _per_image_draws(cfg, inputs, images):
    """Training as the DataLoader path does it: torchvision transforms, one image at a time."""
    train_tf = train_transform(cfg.image_size, inputs.mean, inputs.std, cfg.augment)
    return lambda: torch.stack([train_tf(img) for img in images])


def _batch_draws(cfg, inputs, crop_pct, picked, workdir):
    """Training as the cache path does it: the cached square pixels, augmented as one batch."""
    side = cache_side(cfg.image_size, crop_pct)
    pixels = torch.stack([torch.from_numpy(square_pixels(workdir / f, side)) for f in picked["file"]])
    augmenter = BatchAugment(cfg.image_size, cfg.augment, inputs.mean, inputs.std)
    generator = torch.Generator().manual_seed(cfg.seed)
    return lambda: augmenter(pixels.permute(0, 3, 1, 2), generator)


def run(params: Params, workdir: Path = Path(".")) -> dict:
    from tasks.train import read_split  # tasks.train imports this module

    cfg, aug = resolve_inputs(params.train), params.train.augment
    inputs = input_config(cfg.backbone)
    crop_pct = cfg.eval_crop_pct
    frame = read_split(workdir, "train")
    labels = sorted(frame["label"].unique())
    picked = pick_images(frame, PREVIEW_IMAGES, cfg.seed)
    images = [open_rgb(workdir / f) for f in picked["file"]]

    torch.manual_seed(cfg.seed)  # v2 transforms draw from torch's global generator
    eval_tf = eval_transform(cfg.image_size, inputs.mean, inputs.std, crop_pct)
    batches = {"as evaluated": torch.stack([eval_tf(img) for img in images])}
    draw_batch = _batch_draws(cfg, inputs, crop_pct, picked, workdir) if uses_image_cache(cfg) else \
        _per_image_draws(cfg, inputs, images)
    for draw in range(1, PREVIEW_DRAWS + 1):
        batches[f"augmented {draw}"] = draw_batch()
    captions = {name: list(picked["label"]) for name in batches}
    mix = batch_mix(aug, len(labels))
    if mix is not None:
        targets = torch.tensor([labels.index(label) for label in picked["label"]])
        batches["mixup / cutmix"], soft = mix(batches["augmented 1"], targets)
        captions["mixup / cutmix"] = [_mix_caption(s, labels) for s in soft]

    rows = {name: _viewable(batch, inputs.mean, inputs.std) for name, batch in batches.items()}
    how = "in batches from the image cache" if uses_image_cache(cfg) else "per image"
    title = (f"train.augment at {cfg.image_size} px ({how}), seed {cfg.seed}; "
             f"top row as evaluated (eval_crop_pct {crop_pct:g})")
    save_grid(rows, captions, title, workdir / PREVIEW_PNG)
    return {"images": len(images), "rows": len(rows), "mixed": mix is not None, "preview": str(PREVIEW_PNG)}


if __name__ == "__main__":
    run_stage("augment", run)
