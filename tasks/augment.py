"""Augment stage: draw the training augmentation of `train.augment` as it is configured.

    reports/augment/preview.png   training images as evaluated, four augmented draws of each, and a
                                  mixed batch when mixup or cutmix is on

The draws come from the same code as training: batch augmentation of cached pixels on the device
(tasks/training/batch_augment.py), or torchvision's per-image transforms (tasks/model/transforms.py).
"""
from __future__ import annotations

from pathlib import Path

import torch

from tasks.common.cli import run_stage
from tasks.common.config import Params
from tasks.data.images import open_rgb
from tasks.data.splits import read_split
from tasks.model.backbones import input_config, resolve_inputs
from tasks.model.transforms import batch_mix, eval_transform, train_transform
from tasks.training.batch_augment import BatchAugment, uses_image_cache
from tasks.training.image_cache import cache_side, square_pixels

PARAMS = ["train.backbone", "train.image_size", "train.seed", "train.eval_crop_pct", "train.input", "train.augment"]

PREVIEW_PNG = Path("reports/augment/preview.png")
PREVIEW_IMAGES = 8  # columns: training images, one class each as far as the classes go
PREVIEW_DRAWS = 4  # rows of augmented draws of every image
CELL_INCHES = 1.2  # one image cell of the preview
HEADER_INCHES = 0.4  # title line
DPI = 100


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
