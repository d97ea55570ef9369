"""Where training batches come from: a tensor already in memory (the uint8 image cache or cached
features), or a DataLoader that decodes and transforms every image every epoch.

Both give `(inputs, targets)` on the training device for one epoch through `batches(generator)`;
the order of an epoch comes from `epoch_order`, so shuffling, class-balanced sampling and the
sharding between data-parallel processes are the same on both paths.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from tasks.data.images import open_rgb
from tasks.training.distributed import World

Prepare = Callable[[torch.Tensor, "torch.Generator | None"], torch.Tensor]  # (batch, augmentation stream)
RESIDENT_SHARE = 0.25  # the cache moves into GPU memory when it takes at most this share of what is free


def epoch_order(count: int, generator: torch.Generator | None, world: World,
                weights: torch.Tensor | None = None) -> torch.Tensor:
    """Indices this process visits in one epoch.

    Training (a generator given): a permutation, or with `weights` a draw with replacement in
    proportion to them (class-balanced sampling); cut so every process takes the same number of
    steps. Evaluation (no generator): every index once, split between the processes.
    """
    if generator is None:
        return torch.arange(count)[world.rank::world.size]
    if weights is None:
        order = torch.randperm(count, generator=generator)
    else:
        order = torch.multinomial(weights, count, replacement=True, generator=generator)
    per_process = count // world.size
    return order[: per_process * world.size][world.rank::world.size]


def batch_plan(count: int, batch_size: int, world: World, train: bool) -> tuple[int, int]:
    """(batch size, batches per epoch) for one process. Training drops the last partial batch, so
    every step has the same shape (CUDA graphs, BatchNorm on tiny batches)."""
    per_process = count // world.size if train else -(-count // world.size)
    size = max(1, min(batch_size, per_process))
    return size, (per_process // size if train else -(-per_process // size))


class TensorBatches:
    """Batches gathered from a tensor of inputs: (N, H, W, 3) uint8 images or (N, D) features."""

    def __init__(self, data: torch.Tensor, targets: torch.Tensor, batch_size: int, device: torch.device,
                 world: World, prepare: Prepare, train: bool, weights: torch.Tensor | None = None):
        if device.type == "cuda" and data.nbytes <= RESIDENT_SHARE * torch.cuda.mem_get_info(device)[0]:
            data = data.to(device)  # gathers then run on the GPU; nothing crosses PCIe per batch
        self.data, self.targets = data, targets.to(data.device)
        self.device, self.world, self.prepare, self.train, self.weights = device, world, prepare, train, weights
        self.batch_size, self.count = batch_plan(len(data), batch_size, world, train)

    def __len__(self) -> int:
        return self.count

    def batches(self, order_generator: torch.Generator | None = None,
                augment_generator: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = epoch_order(len(self.data), order_generator if self.train else None, self.world, self.weights)
        order = order.to(self.data.device)  # one index copy per epoch
        if self.train:  # whole batches only (static shapes)
            whole = len(order) - len(order) % self.batch_size
            chunks = order[:whole].view(-1, self.batch_size)
        else:
            chunks = order.split(self.batch_size)
        for index in chunks:
            if self.data.device.type == "cpu":
                # Read the memory-mapped rows in ascending order (page locality), then put them back
                # in the drawn order: MixUp/CutMix mix neighbours, who must stay random.
                ascending, position = index.sort()
                restore = position.argsort()
                inputs, targets = self.data[ascending][restore], self.targets[ascending][restore]
            else:
                inputs, targets = self.data[index], self.targets[index]
            if inputs.device != self.device:
                inputs = inputs.pin_memory().to(self.device, non_blocking=True)
                targets = targets.to(self.device, non_blocking=True)
            yield self.prepare(inputs, augment_generator), targets


def as_nchw(images: torch.Tensor) -> torch.Tensor:
    """(N, H, W, 3) cache rows -> (N, 3, H, W) without a copy (channels_last strides)."""
    return images.permute(0, 3, 1, 2)


class ImageFiles(Dataset):
    """The images of one split, decoded to RGB and transformed on every access."""

    def __init__(self, frame: pd.DataFrame, workdir: Path, targets: torch.Tensor, transform):
        self.files = [workdir / f for f in frame["file"]]
        self.targets = targets
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        return self.transform(open_rgb(self.files[i])), self.targets[i]


class _EpochSampler:
    """Hands the DataLoader the order that `epoch_order` drew for the current epoch."""

    def __init__(self):
        self.order = torch.empty(0, dtype=torch.long)

    def __iter__(self):
        return iter(self.order.tolist())

    def __len__(self) -> int:
        return len(self.order)


class LoaderBatches:
    """Batches from a DataLoader: for augmentation that works per image only, or data too large to cache."""

    def __init__(self, dataset: ImageFiles, batch_size: int, device: torch.device, world: World,
                 num_workers: int, train: bool, weights: torch.Tensor | None = None):
        self.count, self.world, self.device, self.train, self.weights = len(dataset), world, device, train, weights
        self.sampler = _EpochSampler()
        self.batch_size, self.batch_count = batch_plan(self.count, batch_size, world, train)
        # Workers start afresh each epoch, so their random streams derive from the epoch's seed
        # and a resumed run draws the same augmentations.
        self.loader = DataLoader(dataset, batch_size=self.batch_size, sampler=self.sampler, drop_last=train,
                                 num_workers=num_workers, pin_memory=device.type == "cuda")

    def __len__(self) -> int:
        return self.batch_count

    def batches(self, order_generator: torch.Generator | None = None,
                augment_generator: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Per-image transforms draw from the epoch's global seed (see tasks.training.loop.seed_epoch)."""
        self.sampler.order = epoch_order(self.count, order_generator if self.train else None, self.world,
                                         self.weights)
        for images, targets in self.loader:
            yield (images.to(self.device, non_blocking=True, memory_format=torch.channels_last),
                   targets.to(self.device, non_blocking=True))
