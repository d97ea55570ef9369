"""Optimizer, learning-rate schedule, loss and early stopping, as train.* in params.yaml asks."""
from __future__ import annotations

import math

import torch
from torch import nn

from tasks.common.config import TrainParams


def make_optimizer(groups: list[dict], cfg: TrainParams, device: torch.device, capturable: bool) -> torch.optim.Optimizer:
    """AdamW or SGD with Nesterov momentum; fused kernels on CUDA.

    For CUDA-graph capture the learning rates live in GPU tensors, which the schedule fills in
    place, so a replayed step reads the current rate.
    """
    fused = device.type == "cuda"
    if capturable:
        groups = [{**g, "lr": torch.tensor(g["lr"], device=device)} for g in groups]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused, capturable=capturable)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True,
                           weight_decay=cfg.weight_decay, fused=fused)


def make_schedule(optimizer: torch.optim.Optimizer, cfg: TrainParams, steps_per_epoch: int):
    """Stepped once per batch. cosine: linear warmup, then cosine decay to zero. onecycle: warmup to
    the peak, then annealing far below the starting rate (Smith's one-cycle policy, learning rate
    only: a captured CUDA-graph step holds Adam's betas fixed)."""
    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = min(total // 2, round(cfg.warmup_epochs * steps_per_epoch))  # a short run still gets to decay
    if cfg.schedule == "onecycle":
        peaks = [float(g["lr"]) for g in optimizer.param_groups]
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=peaks, total_steps=total,
                                                   pct_start=max(warmup, 1) / total, cycle_momentum=False)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def make_loss(cfg: TrainParams, targets: torch.Tensor, num_classes: int, device: torch.device) -> nn.Module:
    """Cross-entropy with label smoothing; with imbalance: weighted_loss, classes weigh in inverse
    proportion to their training images (a balanced set gets weights of 1)."""
    weight = None
    if cfg.imbalance == "weighted_loss":
        counts = torch.bincount(targets, minlength=num_classes).clamp(min=1).float()
        weight = (counts.sum() / (num_classes * counts)).to(device)
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)


def sample_weights(cfg: TrainParams, targets: torch.Tensor) -> torch.Tensor | None:
    """imbalance: balanced_sampling draws every class equally often per epoch (with replacement)."""
    if cfg.imbalance != "balanced_sampling":
        return None
    return 1.0 / torch.bincount(targets).float()[targets]


class EarlyStopping:
    """Tracks the best epoch by a validation metric; says when patience has run out."""

    def __init__(self, metric: str, patience: int, min_delta: float):
        self.metric, self.patience, self.min_delta = metric, patience, min_delta
        self.best: float | None = None
        self.best_epoch = 0

    def improved(self, value: float, epoch: int) -> bool:
        if self.best is not None:
            gain = self.best - value if self.metric == "loss" else value - self.best
            if gain <= self.min_delta:
                return False
        self.best, self.best_epoch = value, epoch
        return True

    def should_stop(self, epoch: int) -> bool:
        return self.patience > 0 and epoch - self.best_epoch >= self.patience

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_epoch = state["best"], state["best_epoch"]
