"""Train stage: fine-tune a pretrained backbone on the train split (docs/training.md).

Reads data/split/{train,val}.csv and writes
    models/model.safetensors, models/model.json   the bundle (tasks/model/bundle.py), from the best epoch
    checkpoints/last.pt, checkpoints/best.pt      a killed run resumes from last.pt (tasks/training/checkpoint.py)
    reports/train/history.csv                    per epoch: loss, accuracy, macro F1, learning rate,
                                                 trainable parameters, img/s, peak memory (dvc plots)
    reports/train/curves.png, summary.json
Read top to bottom: `train` sets the run up, resumes it if it was interrupted, fits it epoch by
epoch and finishes it. The engine (strategies, batches, the step, the optimizer, checkpoints) is in
tasks/training/. With `train.processes` (or `train.nodes`) above 1 the stage starts itself under
torchrun and trains data-parallel (tasks/training/distributed.py).
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import torch
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import update_bn

from tasks.common.cli import run_stage
from tasks.common.config import Params, TrainParams
from tasks.common.paths import CURVES_PNG, MODEL_DIR, split_csv
from tasks.data.splits import class_indices, read_split
from tasks.model.backbones import create_backbone, head_module, resolve_inputs
from tasks.model.bundle import fit_projection, save_bundle
from tasks.model.device import peak_memory_mb, pick_device, reset_peak_memory
from tasks.model.transforms import batch_mix
from tasks.training import checkpoint
from tasks.training.batches import TensorBatches
from tasks.training.curves import plot_curves
from tasks.training.distributed import (
    World,
    join_world,
    launch,
    launched,
    leave_world,
    node_rank,
    process_count,
    torchrun_command,
)
from tasks.training.inputs import TrainContext, as_is, cached_images, embed, image_inputs, probe_features
from tasks.training.loop import RunState, calibrate, seed_epoch, train_epoch, validate
from tasks.training.optim import EarlyStopping, make_loss, make_optimizer, make_schedule, sample_weights
from tasks.training.step import AUTO_BATCH_CPU, TrainStep, auto_batch_size, why_not_capturable
from tasks.training.strategies import layer_groups, param_groups, set_trainable, trainable_groups

HISTORY_CSV = Path("reports/train/history.csv")
SUMMARY_JSON = Path("reports/train/summary.json")
METRIC_COLUMNS = {"accuracy": "val_acc", "macro_f1": "val_macro_f1", "loss": "val_loss"}


def run_or_launch(params: Params, workdir: Path = Path(".")) -> dict:
    """The stage as DVC runs it: in this process, or in train.processes processes on each of
    train.nodes machines under torchrun, each of which reads the same params.yaml and runs `run`."""
    processes = process_count(params.train.processes)
    if launched() or processes * params.train.nodes == 1:
        return run(params, workdir)
    launch(torchrun_command(processes, "tasks.train", params.train.nodes, params.train.rendezvous), workdir)
    if params.train.nodes > 1 and node_rank() > 0:  # node 0 holds the first process, which writes the outputs
        return {"node": node_rank(), "nodes": params.train.nodes, "outputs": "written on node 0"}
    return json.loads((workdir / SUMMARY_JSON).read_text())


def run(params: Params, workdir: Path = Path(".")) -> dict:
    world = join_world(params.train.device)
    try:
        return train(params, workdir, world)
    finally:
        leave_world(world)


def train(params: Params, workdir: Path, world: World) -> dict:
    """Set up, pick up where an interrupted run of the same program stopped, fit, write the bundle."""
    cfg = resolve_inputs(params.train)  # `auto` image size and crop: the backbone's own
    device = pick_device(cfg.device, world.local_rank)
    train_df, val_df = read_split(workdir, "train"), read_split(workdir, "val")
    labels = sorted(train_df["label"].unique())
    torch.manual_seed(cfg.seed)  # the new head's initial weights
    backbone = create_backbone(cfg.backbone, cfg.weights, num_classes=len(labels))
    model = backbone.model.to(device, memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    ctx = TrainContext(cfg, workdir, device, world, backbone.mean, backbone.std,
                       batch_size=choose_batch_size(cfg, model, device), num_classes=len(labels))

    blocker = why_not_capturable(cfg.optimizer, device, cfg.compile, world.size)
    state, train_features = prepare(ctx, model, train_df, val_df, labels, cuda_graph=cfg.cuda_graph and not blocker)
    run_fingerprint = checkpoint.fingerprint(
        {**cfg.model_dump(), "background": params.clean.background, "processes": world.size},
        [workdir / split_csv("train"), workdir / split_csv("val")])
    resume(ctx, state, run_fingerprint)
    setup = {"processes": world.size, "batch_size": ctx.batch_size, "steps_per_epoch": len(state.train_in),
             "input": "features" if train_features is not None
             else "cache" if isinstance(state.train_in, TensorBatches) else "loader",
             "cuda_graph": state.cuda_graph}
    if world.main:
        print(f"train: {cfg.strategy} of {cfg.backbone} on {device}, {setup}"
              + (f" (CUDA graph off: {blocker})" if cfg.cuda_graph and blocker else ""))

    fit(ctx, state, run_fingerprint)
    if not world.main:
        return {"rank": world.rank}
    return finish(params, ctx, state, labels, train_df, val_df, train_features, setup)


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


def resume(ctx: TrainContext, state: RunState, run_fingerprint: str) -> None:
    """Load the last checkpoint of this exact run (same params, data and code), if there is one."""
    ckpt_dir = ctx.workdir / checkpoint.CHECKPOINT_DIR
    saved = checkpoint.resumable(ckpt_dir, run_fingerprint)
    if ctx.world.size > 1:  # every process resumes from the same epoch, or none does
        epoch = torch.tensor([saved["epoch"] if saved else -1], device=ctx.device)
        if ctx.world.sum(epoch.clone()).item() != epoch.item() * ctx.world.size:
            if ctx.world.main:
                print("train: the processes found different checkpoints (machines without a shared "
                      "checkpoints/ folder?); starting afresh")
            saved = None
    if saved is None:
        return
    state.load_state_dict(saved, ctx.device, ctx.cfg.epochs)
    if ctx.world.main:
        print(f"resuming from {ckpt_dir / checkpoint.LAST}: epoch {saved['epoch']} of {ctx.cfg.epochs} done"
              + (", training finished" if saved["finished"] else ""))


def fit(ctx: TrainContext, state: RunState, run_fingerprint: str) -> None:
    """Epoch after epoch: a new phase whenever more layer groups unfreeze, one pass of training, one
    of validation, the best weights kept, a checkpoint written; until the last epoch or early stop."""
    cfg, world, device = ctx.cfg, ctx.world, ctx.device
    ckpt_dir = ctx.workdir / checkpoint.CHECKPOINT_DIR
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


def finish(params: Params, ctx: TrainContext, state: RunState, labels: list[str], train_df: pd.DataFrame,
           val_df: pd.DataFrame, train_features: torch.Tensor | None, setup: dict) -> dict:
    """Best epoch's weights -> fresh normalization statistics -> embedding basis, temperature ->
    the bundle and the reports."""
    cfg, model, device = ctx.cfg, state.model, ctx.device
    state.trained.load_state_dict(state.best_weights)
    alone = ctx.alone()  # what follows runs in this process only
    if train_features is None:
        # BatchNorm statistics lag behind the weights during a short fine-tune; recompute them on
        # the training images as served (shuffled, so that batches mix classes).
        y_train = targets(train_df, labels)
        order, _ = seed_epoch(cfg.seed, 0, 0, device)
        update_bn(cached_images(alone, train_df, y_train, train=True, augment=False).batches(order), model, device)
        train_features = embed(model, cached_images(alone, train_df, y_train, train=False, augment=False), device)
    val_in = cached_images(alone, val_df, targets(val_df, labels), train=False, augment=False)
    val = validate(model, val_in, alone)
    calibration = calibrate(model, val_in, params.inference.tta, params.inference.temperature_scaling, device)
    meta = {
        "labels": labels, "backbone": cfg.backbone, "weights": cfg.weights, "image_size": cfg.image_size,
        "mean": list(ctx.mean), "std": list(ctx.std), "crop_pct": cfg.eval_crop_pct,
        # Uploads with transparency are composited on the colour the training images were.
        "background": list(params.clean.background),
        "temperature": calibration["temperature"], "tta": params.inference.tta,
    }
    save_bundle(ctx.workdir / MODEL_DIR, model, meta, fit_projection(train_features.cpu()))

    history = pd.DataFrame(state.history)
    (ctx.workdir / HISTORY_CSV).parent.mkdir(parents=True, exist_ok=True)
    history.to_csv(ctx.workdir / HISTORY_CSV, index=False)
    plot_curves(history, ctx.workdir / CURVES_PNG)
    steady = history["train_img_s"].iloc[1:] if len(history) > 1 else history["train_img_s"]  # epoch 1 warms up
    summary = {
        "strategy": cfg.strategy, "backbone": cfg.backbone, "device": str(device), **setup,
        "epochs_run": len(history), "best_epoch": state.stopper.best_epoch,
        "train_images": len(train_df), "val_acc": round(val["acc"], 4), "val_macro_f1": round(val["macro_f1"], 4),
        **calibration,
        "train_seconds": round(float(history["seconds"].sum()), 2),
        "train_img_s": round(float(steady.mean()), 1),
        "peak_memory_mb": round(float(history["peak_memory_mb"].max()), 1),
    }
    (ctx.workdir / SUMMARY_JSON).write_text(json.dumps(summary, indent=2))
    return summary


def names_in(trained: nn.Module, model: nn.Module, groups: list[list[str]]) -> list[list[str]]:
    """Layer groups named relative to `trained` (the head alone for a linear probe)."""
    if trained is model:
        return groups
    own = {id(p): name for name, p in trained.named_parameters()}
    full = dict(model.named_parameters())
    return [[own[id(full[name])] for name in group if id(full[name]) in own] for group in groups]


if __name__ == "__main__":
    run_stage("train", run_or_launch)
