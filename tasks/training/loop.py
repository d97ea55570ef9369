"""The parts of the training loop: what a run carries from epoch to epoch, one epoch of training,
one pass over the validation batches, and the random streams of an epoch."""
from __future__ import annotations

import dataclasses
import time

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from tasks.evaluation.calibration import expected_calibration_error, fit_temperature, softmax
from tasks.model.bundle import with_tta
from tasks.model.device import autocast
from tasks.training.inputs import TrainContext
from tasks.training.optim import EarlyStopping
from tasks.training.step import TrainStep
from tasks.training.strategies import freeze_norm_stats


@dataclasses.dataclass
class RunState:
    """Everything one training run updates from epoch to epoch; a checkpoint holds it whole."""

    model: nn.Module  # the whole network, as saved in the bundle
    trained: nn.Module  # what the optimizer updates: the model, or its head alone (linear probe)
    groups: list[list[str]]  # layer groups of `trained`, from the input up; the last is the head
    train_in: object  # TensorBatches or LoaderBatches
    val_in: object
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loss_fn: nn.Module
    mix: object | None  # MixUp / CutMix of whole batches, or None
    ema: object | None  # timm ModelEmaV3, or None
    stopper: EarlyStopping
    cuda_graph: bool  # the training step is captured in a CUDA graph
    history: list[dict] = dataclasses.field(default_factory=list)
    best_weights: dict | None = None  # state dict of the best epoch's judged weights, on the CPU
    next_epoch: int = 1

    @property
    def judged(self) -> nn.Module:
        """The weights validation judges and the bundle keeps: the EMA's, when there is one."""
        return self.ema.module if self.ema is not None else self.trained

    def state_dict(self, epoch: int, finished: bool) -> dict:
        return {
            "finished": finished, "epoch": epoch, "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None, "stopper": self.stopper.state_dict(),
            "history": self.history, "best_weights": self.best_weights,
        }

    def load_state_dict(self, state: dict, device: torch.device, epochs: int) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.cuda_graph:  # loaded learning rates arrive as CPU tensors; the captured step reads GPU ones
            for group in self.optimizer.param_groups:
                group["lr"] = torch.as_tensor(group["lr"], device=device)
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.stopper.load_state_dict(state["stopper"])
        self.history, self.best_weights = state["history"], state["best_weights"]
        self.next_epoch = epochs + 1 if state["finished"] else state["epoch"] + 1


def seed_epoch(seed: int, epoch: int, rank: int, device: torch.device) -> tuple[torch.Generator, torch.Generator]:
    """Random streams of one epoch, derived from (seed, epoch, process) alone, so a resumed run
    draws what an uninterrupted one would. The order is the same on every process (each takes its
    own shard of it); augmentation, dropout and mixing differ between processes."""
    own = seed * 1_000_003 + epoch * 1_009 + rank
    torch.manual_seed(own)  # dropout, stochastic depth, mixup/cutmix draws
    order = torch.Generator().manual_seed(seed * 1_000_003 + epoch * 1_009)
    augment = torch.Generator(device).manual_seed(own)
    return order, augment


def train_epoch(run: RunState, step: TrainStep, streams: tuple[torch.Generator, torch.Generator],
                ctx: TrainContext, desc: str) -> dict:
    """One pass over the training batches. Figures stay on the device until the end of the epoch
    (the progress bar reads them every few steps), so the GPU never waits for the host."""
    device, world = ctx.device, ctx.world
    run.trained.train()
    freeze_norm_stats(run.trained)  # frozen layers keep their pretrained statistics
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    seen = 0
    batches = run.train_in
    bar = tqdm(total=len(batches), desc=desc, leave=False, disable=None if world.main else True)
    start = time.perf_counter()
    for i, (inputs, labels) in enumerate(batches.batches(*streams)):
        if run.mix is not None:
            inputs, targets = run.mix(inputs, labels)
        else:
            targets = F.one_hot(labels, ctx.num_classes).float()
        loss, logits = step(inputs, targets)
        run.scheduler.step()
        if run.ema is not None:
            run.ema.update(run.trained, step=run.scheduler.last_epoch)  # the schedule counts optimizer steps
        loss_sum += loss * len(labels)
        correct += (logits.argmax(1) == targets.argmax(1)).sum()
        seen += len(labels)
        bar.update()
        if not bar.disable and (i % 10 == 0 or i == len(batches) - 1):  # .item() waits for the device
            bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}", acc=f"{correct.item() / seen:.3f}",
                            img_s=f"{seen * world.size / (time.perf_counter() - start):.0f}")
    bar.close()
    totals = world.sum(torch.stack([loss_sum, correct, torch.tensor(float(seen), device=device)]))
    seconds = time.perf_counter() - start
    loss_total, correct_total, seen_total = totals.tolist()
    return {"loss": loss_total / seen_total, "acc": correct_total / seen_total,
            "seconds": seconds, "img_s": seen_total / seconds}


@torch.no_grad()
def validate(module: nn.Module, batches, ctx: TrainContext) -> dict:
    """Loss (plain cross-entropy), accuracy and macro F1 on every batch, summed over all processes."""
    num_classes, device, world = ctx.num_classes, ctx.device, ctx.world
    module.eval()
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.long, device=device)
    loss_sum = torch.zeros((), device=device)
    for inputs, labels in batches.batches():
        with autocast(device):
            logits = module(inputs).float()
        loss_sum += F.cross_entropy(logits, labels, reduction="sum")
        confusion += torch.bincount(labels * num_classes + logits.argmax(1), minlength=num_classes ** 2)
    confusion = world.sum(confusion).view(num_classes, num_classes).double()
    loss_sum = world.sum(loss_sum)
    true_pos, actual, predicted = confusion.diag(), confusion.sum(1), confusion.sum(0)
    f1 = 2 * true_pos / (actual + predicted).clamp(min=1)
    present = (actual + predicted) > 0  # like scikit-learn: classes seen in labels or predictions
    return {"loss": loss_sum.item() / actual.sum().item(), "acc": (true_pos.sum() / actual.sum()).item(),
            "macro_f1": f1[present].mean().item()}


def calibrate(model: nn.Module, val_in, tta: str, temperature_scaling: bool, device: torch.device) -> dict:
    """The bundle's temperature, fitted on the validation logits as the bundle will compute them
    (with its test-time augmentation); and the validation ECE without and with it."""
    logits, targets = [], []
    model.eval()
    with torch.inference_mode():
        for inputs, labels in val_in.batches():
            with autocast(device):
                out = with_tta(model(inputs).float(), inputs, tta, lambda x: model(x).float())
            logits.append(out.cpu())
            targets.append(labels.cpu())
    logits, targets = torch.cat(logits), torch.cat(targets)
    temperature = round(fit_temperature(logits, targets), 4) if temperature_scaling else 1.0
    logits, targets = logits.numpy(), targets.numpy()
    return {"temperature": temperature,
            "val_ece_uncalibrated": round(expected_calibration_error(softmax(logits), targets), 4),
            "val_ece": round(expected_calibration_error(softmax(logits, temperature), targets), 4)}
