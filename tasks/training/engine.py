"""One training run, from split frames to fitted weights: set up, resume, fit epoch by epoch.

The train stage runs it once on train/val, the label folds once per fold, the recipe search once
per trial (or fold), each through tasks/training/shipped.py, which decides what of a run is shipped
and judges it. Read top to bottom: `fit_frames` builds the network and what trains it (`prepare`),
picks up an interrupted run with the same fingerprint (`resume`), then `fit` runs the epochs,
keeping the best weights and a checkpoint after each.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from tasks.common.config import TrainParams
from tasks.data.splits import class_indices
from tasks.model.backbones import create_backbone, head_module
from tasks.model.device import peak_memory_mb, pick_device, reset_peak_memory
from tasks.model.transforms import batch_mix
from tasks.training import checkpoint
from tasks.training.batches import TensorBatches
from tasks.training.distributed import World
from tasks.training.inputs import TrainContext, as_is, image_inputs, probe_features
from tasks.training.loop import RunState, seed_epoch, train_epoch, validate
from tasks.training.optim import EarlyStopping, make_loss, make_optimizer, make_schedule, sample_weights
from tasks.training.step import AUTO_BATCH_CPU, TrainStep, auto_batch_size, why_not_capturable
from tasks.training.strategies import layer_groups, param_groups, set_trainable, trainable_groups

METRIC_COLUMNS = {"accuracy": "val_acc", "macro_f1": "val_macro_f1", "loss": "val_loss"}


@dataclasses.dataclass
class FittedRun:
    """A finished run: its settings, its state (weights, history, best epoch) and how it ran."""

    ctx: TrainContext
    state: RunState
    train_features: torch.Tensor | None  # a linear probe's training features, else None
    setup: dict  # processes, batch size, steps per epoch, input, CUDA graph


def fit_frames(cfg: TrainParams, workdir: Path, world: World, train_df: pd.DataFrame, val_df: pd.DataFrame,
               labels: list[str], run_fingerprint: str, ckpt_dir: Path, name: str = "train",
               on_epoch: Callable[[dict], None] | None = None) -> FittedRun:
    """Fine-tune cfg.backbone on train_df, validating on val_df after every epoch.

    `cfg` has `auto` values resolved (tasks.model.backbones.resolve_inputs). A checkpoint in
    ckpt_dir with the same fingerprint is resumed; `name` prefixes the log lines. `on_epoch` gets
    each epoch's history row once its checkpoint is written (a study reports it, and may stop the run).
    """
    device = pick_device(cfg.device, world.local_rank)
    torch.manual_seed(cfg.seed)  # the new head's initial weights
    backbone = create_backbone(cfg.backbone, cfg.weights, num_classes=len(labels))
    model = backbone.model.to(device, memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    ctx = TrainContext(cfg, workdir, device, world, backbone.mean, backbone.std,
                       batch_size=choose_batch_size(cfg, model, device), num_classes=len(labels))

    blocker = why_not_capturable(cfg.optimizer, device, cfg.compile, world.size)
    state, train_features = prepare(ctx, model, train_df, val_df, labels, cuda_graph=cfg.cuda_graph and not blocker)
    resume(ctx, state, run_fingerprint, ckpt_dir, name)
    setup = {"processes": world.size, "batch_size": ctx.batch_size, "steps_per_epoch": len(state.train_in),
             "input": "features" if train_features is not None
             else "cache" if isinstance(state.train_in, TensorBatches) else "loader",
             "cuda_graph": state.cuda_graph}
    if world.main:
        print(f"{name}: {cfg.strategy} of {cfg.backbone} on {device}, {setup}"
              + (f" (CUDA graph off: {blocker})" if cfg.cuda_graph and blocker else ""))
    fit(ctx, state, run_fingerprint, ckpt_dir, on_epoch)
    return FittedRun(ctx, state, train_features, setup)


def choose_batch_size(cfg: TrainParams, model: nn.Module, device: torch.device) -> int:
    if cfg.batch_size != "auto":
        return cfg.batch_size
    # A linear probe trains on feature vectors: probing image batches would say nothing about it.
    return AUTO_BATCH_CPU if cfg.strategy == "linear_probe" else auto_batch_size(model, cfg.image_size, device)


def targets(frame: pd.DataFrame, labels: list[str]) -> torch.Tensor:
    return torch.from_numpy(class_indices(frame, labels))


def prepare(ctx: TrainContext, model: nn.Module, train_df: pd.DataFrame, val_df: pd.DataFrame,
            labels: list[str], cuda_graph: bool) -> tuple[RunState, torch.Tensor | None]:
    """What trains, on what, and how: the head on cached backbone features (linear probe) or the
    whole network on images; the optimizer, schedule, loss, mixing, EMA and early stopping.

    Returns the run's state and, for a linear probe, the training features.
    """
    cfg = ctx.cfg
    y_train, y_val = targets(train_df, labels), targets(val_df, labels)
    weights = sample_weights(cfg, y_train)
    groups = layer_groups(model)
    train_features = None
    if cfg.strategy == "linear_probe":
        train_features, val_features = probe_features(ctx, model, train_df), probe_features(ctx, model, val_df)
        trained, groups = head_module(model), groups[-1:]
        train_in = TensorBatches(train_features, y_train, ctx.batch_size, ctx.device, ctx.world, as_is,
                                 train=True, weights=weights)
        val_in = TensorBatches(val_features, y_val, ctx.batch_size, ctx.device, ctx.world, as_is, train=False)
    else:
        trained = model
        train_in, val_in = image_inputs(ctx, train_df, val_df, y_train, y_val, weights)

    optimizer = make_optimizer(param_groups(model, groups, cfg), cfg, ctx.device, capturable=cuda_graph)
    state = RunState(
        model=model, trained=trained, groups=names_in(trained, model, groups),
        train_in=train_in, val_in=val_in, optimizer=optimizer,
        scheduler=make_schedule(optimizer, cfg, len(train_in)),
        loss_fn=make_loss(cfg, y_train, ctx.num_classes, ctx.device),
        mix=None if train_features is not None else batch_mix(cfg.augment, num_classes=ctx.num_classes),
        # timm's EMA: foreach lerp with no host sync per step, and a decay that warms up (short runs too).
        ema=ModelEmaV3(trained, decay=cfg.ema_decay, use_warmup=True) if cfg.ema_decay > 0 else None,
        stopper=EarlyStopping(cfg.early_stopping.metric, cfg.early_stopping.patience, cfg.early_stopping.min_delta),
        cuda_graph=cuda_graph,
    )
    return state, train_features


def resume(ctx: TrainContext, state: RunState, run_fingerprint: str, ckpt_dir: Path, name: str) -> None:
    """Load the last checkpoint of this exact run (same params, data and code), if there is one."""
    saved = checkpoint.resumable(ckpt_dir, run_fingerprint)
    if ctx.world.size > 1:  # every process resumes from the same epoch, or none does
        epoch = torch.tensor([saved["epoch"] if saved else -1], device=ctx.device)
        if ctx.world.sum(epoch.clone()).item() != epoch.item() * ctx.world.size:
            if ctx.world.main:
                print(f"{name}: the processes found different checkpoints (machines without a shared "
                      "checkpoints/ folder?); starting afresh")
            saved = None
    if saved is None:
        return
    state.load_state_dict(saved, ctx.device, ctx.cfg.epochs)
    if ctx.world.main:
        print(f"{name}: resuming from {ckpt_dir / checkpoint.LAST}: epoch {saved['epoch']} of {ctx.cfg.epochs} done"
              + (", training finished" if saved["finished"] else ""))


def fit(ctx: TrainContext, state: RunState, run_fingerprint: str, ckpt_dir: Path,
        on_epoch: Callable[[dict], None] | None = None) -> None:
    """Epoch after epoch: a new phase whenever more layer groups unfreeze, one pass of training, one
    of validation, the best weights kept, a checkpoint written; until the last epoch or early stop."""
    cfg, world, device = ctx.cfg, ctx.world, ctx.device
    trainable_now, trainable_params, step = -1, 0, None
    for epoch in range(state.next_epoch, cfg.epochs + 1):
        streams = seed_epoch(cfg.seed, epoch, world.rank, device)
        count = trainable_groups(cfg, epoch, len(state.groups))
        if count != trainable_now:  # a new phase: a new trainable set, so a new DDP wrapper and graph
            trainable_params = set_trainable(state.trained, state.groups, count)
            step = training_step(ctx, state)
            trainable_now = count
        reset_peak_memory(device)
        fitted = train_epoch(state, step, streams, ctx, desc=f"epoch {epoch}/{cfg.epochs}")
        val = validate(state.judged, state.val_in, ctx)
        state.history.append({
            "epoch": epoch, "train_loss": fitted["loss"], "train_acc": fitted["acc"],
            "val_loss": val["loss"], "val_acc": val["acc"], "val_macro_f1": val["macro_f1"],
            "lr": float(state.optimizer.param_groups[0]["lr"]), "trainable_params": trainable_params,
            "seconds": fitted["seconds"], "train_img_s": fitted["img_s"], "peak_memory_mb": peak_memory_mb(device),
        })
        if state.stopper.improved(state.history[-1][METRIC_COLUMNS[state.stopper.metric]], epoch):
            state.best_weights = {k: v.detach().cpu().clone() for k, v in state.judged.state_dict().items()}
        stop = state.stopper.should_stop(epoch)
        if world.main:
            print(f"epoch {epoch}/{cfg.epochs}: train loss {fitted['loss']:.3f} acc {fitted['acc']:.3f} | val loss "
                  f"{val['loss']:.3f} acc {val['acc']:.3f} F1 {val['macro_f1']:.3f} | {fitted['img_s']:.0f} img/s, "
                  f"peak {state.history[-1]['peak_memory_mb']:.0f} MB"
                  + (f" | no gain for {cfg.early_stopping.patience} epochs: stopping" if stop else ""))
            if state.stopper.best_epoch == epoch:
                checkpoint.save({"epoch": epoch, "model": state.best_weights}, ckpt_dir, checkpoint.BEST)
            saved = state.state_dict(epoch, finished=stop or epoch == cfg.epochs)
            checkpoint.save({"fingerprint": run_fingerprint, **saved}, ckpt_dir, checkpoint.LAST)
        if on_epoch is not None:
            on_epoch(state.history[-1])
        if stop:
            break


def training_step(ctx: TrainContext, state: RunState) -> TrainStep:
    """The step for the current phase: data-parallel and compiled as asked, captured when it can be."""
    forward = state.trained
    if ctx.world.size > 1:
        forward = DistributedDataParallel(forward, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    if ctx.cfg.compile:
        forward = torch.compile(forward)
    return TrainStep(forward, state.loss_fn, state.optimizer, ctx.cfg.grad_clip, ctx.device, graph=state.cuda_graph)


def names_in(trained: nn.Module, model: nn.Module, groups: list[list[str]]) -> list[list[str]]:
    """Layer groups named relative to `trained` (the head alone for a linear probe)."""
    if trained is model:
        return groups
    own = {id(p): name for name, p in trained.named_parameters()}
    full = dict(model.named_parameters())
    return [[own[id(full[name])] for name in group if id(full[name]) in own] for group in groups]
