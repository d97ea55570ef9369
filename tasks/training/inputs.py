"""What a training run reads: its settings in one object, and the batches of its splits.

Images come from the uint8 image cache, augmented in batches on the training device, or from a
DataLoader with per-image torchvision transforms (train.input). A linear probe trains on backbone
features computed once per dataset version and cached.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from tasks.common.config import TrainParams
from tasks.common.files import digest
from tasks.common.paths import CACHE_DIR
from tasks.model.backbones import pooled_features
from tasks.model.device import autocast
from tasks.model.transforms import eval_transform, train_transform
from tasks.training.batch_augment import BatchAugment, normalize, uses_image_cache
from tasks.training.batches import ImageFiles, LoaderBatches, TensorBatches, as_nchw
from tasks.training.checkpoint import save
from tasks.training.distributed import World
from tasks.training.image_cache import CACHE_DIR as IMAGE_CACHE_DIR
from tasks.training.image_cache import KEEP, cache_key, cache_side, image_cache, prune

FEATURE_DIR = CACHE_DIR / "features"


@dataclasses.dataclass(frozen=True)
class TrainContext:
    """The values that most of training reads, gathered once per run."""

    cfg: TrainParams  # train params, `auto` image size and crop resolved to the backbone's own
    workdir: Path
    device: torch.device
    world: World
    mean: tuple[float, float, float]  # the backbone's input normalization
    std: tuple[float, float, float]
    batch_size: int
    num_classes: int

    @property
    def cache_side(self) -> int:
        """The side images are cached at; evaluation centre-crops cfg.image_size out of it."""
        return cache_side(self.cfg.image_size, self.cfg.eval_crop_pct)

    def alone(self, **changes) -> "TrainContext":
        """The same run in this process only (what follows training, and feature caching)."""
        return dataclasses.replace(self, world=World(), **changes)


def image_inputs(ctx: TrainContext, train_df: pd.DataFrame, val_df: pd.DataFrame, y_train: torch.Tensor,
                 y_val: torch.Tensor, weights: torch.Tensor | None):
    """Training and validation batches of images: from the cache, or from a DataLoader."""
    if uses_image_cache(ctx.cfg):
        return (cached_images(ctx, train_df, y_train, train=True, augment=True, weights=weights),
                cached_images(ctx, val_df, y_val, train=False, augment=False))
    cfg = ctx.cfg
    train_tf = train_transform(cfg.image_size, ctx.mean, ctx.std, cfg.augment)
    eval_tf = eval_transform(cfg.image_size, ctx.mean, ctx.std, cfg.eval_crop_pct)
    return (LoaderBatches(ImageFiles(train_df, ctx.workdir, y_train, train_tf), ctx.batch_size, ctx.device, ctx.world,
                          cfg.num_workers, train=True, weights=weights),
            LoaderBatches(ImageFiles(val_df, ctx.workdir, y_val, eval_tf), ctx.batch_size, ctx.device, ctx.world,
                          cfg.num_workers, train=False))


def cached_images(ctx: TrainContext, frame: pd.DataFrame, targets: torch.Tensor, train: bool, augment: bool,
                  weights: torch.Tensor | None = None) -> TensorBatches:
    """Batches from the image cache, augmented or as evaluation sees them (centre crop, normalize)."""
    side, size = ctx.cache_side, ctx.cfg.image_size
    files = [ctx.workdir / f for f in frame["file"]]
    if not ctx.world.main:
        ctx.world.barrier()  # the first process decodes, the others then open its file
    pixels = image_cache(files, side, ctx.workdir / IMAGE_CACHE_DIR, desc=f"caching {len(files)} images at {side} px")
    if ctx.world.main:
        ctx.world.barrier()
    if augment:
        augmenter = BatchAugment(size, ctx.cfg.augment, ctx.mean, ctx.std)

        def prepare(batch, generator):
            return augmenter(as_nchw(batch), generator)
    else:
        top = round((side - size) / 2)  # as torchvision's CenterCrop

        def prepare(batch, generator):
            return normalize(as_nchw(batch)[:, :, top:top + size, top:top + size], ctx.mean, ctx.std)
    return TensorBatches(torch.from_numpy(pixels), targets, ctx.batch_size, ctx.device, ctx.world, prepare,
                         train=train, weights=weights)


def probe_features(ctx: TrainContext, model: nn.Module, frame: pd.DataFrame) -> torch.Tensor:
    """Frozen backbone features of a split's images, computed once per dataset version and backbone."""
    cfg = ctx.cfg
    if cfg.weights in ("imagenet", "none"):
        weights_id = cfg.weights
    else:  # size and modification time, as the image cache keys files (not the access time)
        stat = Path(cfg.weights).stat()
        weights_id = f"{cfg.weights}:{stat.st_size}:{stat.st_mtime_ns}"
    files = [ctx.workdir / f for f in frame["file"]]
    key = digest([cfg.backbone, weights_id, cfg.image_size, cfg.eval_crop_pct, cache_key(files, ctx.cache_side)])
    path = ctx.workdir / FEATURE_DIR / f"{key[:20]}.pt"
    if ctx.world.main and not path.is_file():
        unlabelled = torch.zeros(len(frame), dtype=torch.long)
        images = cached_images(ctx.alone(batch_size=256), frame, unlabelled, train=False, augment=False)
        save(embed(model, images, ctx.device), path.parent, path.name)
        prune(path.parent, "*.pt", KEEP)
    ctx.world.barrier()
    return torch.load(path, map_location=ctx.device, weights_only=True)


@torch.inference_mode()
def embed(model: nn.Module, batches: TensorBatches, device: torch.device) -> torch.Tensor:
    """Penultimate-layer features of every batch, in order, as float32 on the CPU."""
    model.eval()
    parts = []
    for inputs, _ in batches.batches():
        with autocast(device):
            parts.append(pooled_features(model, inputs).float().cpu())
    return torch.cat(parts)


def as_is(batch: torch.Tensor, generator=None) -> torch.Tensor:
    """The `prepare` of feature batches: features need no augmentation or normalization."""
    return batch
