"""Train stage: fine-tune a pretrained backbone on the train split (docs/training.md).

Reads data/split/{train,val}.csv and writes
    models/model.safetensors, models/model.json   the bundle (tasks/bundle.py), from the best epoch
    checkpoints/last.pt, checkpoints/best.pt      a killed run resumes from last.pt (tasks/checkpoint.py)
    reports/train/history.csv                    per epoch: loss, accuracy, macro F1, learning rate,
                                                 trainable parameters, img/s, peak memory (dvc plots)
    reports/train/curves.png, summary.json
The loop below reads top to bottom; strategies, inputs, the step, the optimizer and checkpoints each
have their own module. Under `torchrun` it trains data-parallel (tasks/distributed.py).
"""
from __future__ import annotations

import json
import resource
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import pandas as pd
import torch
import torch.nn.functional as F
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import update_bn
from tqdm import tqdm

from tasks import checkpoint
from tasks.augment import batch_mix, eval_transform, train_transform
from tasks.backbones import create_backbone, head_module, pooled_features, resolve_inputs
from tasks.batch_augment import BatchAugment, normalize, uses_image_cache
from tasks.bundle import fit_projection, save_bundle, with_tta
from tasks.calibration import expected_calibration_error, fit_temperature, softmax
from tasks.cli import run_stage
from tasks.config import Params, TrainParams, UserError
from tasks.distributed import World, join_world, leave_world
from tasks.image_cache import CACHE_DIR, KEEP, cache_key, cache_side, image_cache, prune
from tasks.inputs import ImageFiles, LoaderBatches, TensorBatches, as_nchw
from tasks.optim import (
    EarlyStopping,
    make_loss,
    make_optimizer,
    make_schedule,
    sample_weights,
)
from tasks.split import split_csv
from tasks.strategies import (
    freeze_norm_stats,
    layer_groups,
    param_groups,
    set_trainable,
    trainable_groups,
)
from tasks.train_step import AUTO_BATCH_CPU, TrainStep, auto_batch_size, autocast, graph_capturable

MODEL_DIR = Path("models")
HISTORY_CSV = Path("reports/train/history.csv")
CURVES_PNG = Path("reports/train/curves.png")
SUMMARY_JSON = Path("reports/train/summary.json")
FEATURE_DIR = Path(".cache/features")
METRIC_COLUMNS = {"accuracy": "val_acc", "macro_f1": "val_macro_f1", "loss": "val_loss"}


def run(params: Params, workdir: Path = Path(".")) -> dict:
    world = join_world(params.train.device)
    try:
        return train(params, workdir, world)
    finally:
        leave_world(world)


def train(params: Params, workdir: Path, world: World) -> dict:
    cfg = resolve_inputs(params.train)  # `auto` image size and crop: the backbone's own
    device = pick_device(cfg.device, world)
    train_df, val_df = read_split(workdir, "train"), read_split(workdir, "val")
    labels = sorted(train_df["label"].unique())
    y_train, y_val = class_indices(train_df, labels), class_indices(val_df, labels)

    torch.manual_seed(cfg.seed)  # the new head's initial weights
    backbone = create_backbone(cfg.backbone, cfg.weights, num_classes=len(labels))
    model = backbone.model.to(device, memory_format=torch.channels_last)
    crop_pct = cfg.eval_crop_pct
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    probe = cfg.strategy == "linear_probe"
    if cfg.batch_size != "auto":
        batch_size = cfg.batch_size
    else:  # a linear probe trains on feature vectors: probing image batches would say nothing about it
        batch_size = AUTO_BATCH_CPU if probe else auto_batch_size(model, cfg.image_size, device)
    groups = layer_groups(model)

    # What trains, on what: the head on cached backbone features (linear probe), or the whole
    # network on images.
    if probe:
        features = {name: probe_features(model, frame, workdir, cfg, backbone, crop_pct, device, world)
                    for name, frame in (("train", train_df), ("val", val_df))}
        trained = head_module(model)
        train_in = TensorBatches(features["train"], y_train, batch_size, device, world, _as_is, train=True,
                                 weights=sample_weights(cfg, y_train))
        val_in = TensorBatches(features["val"], y_val, batch_size, device, world, _as_is, train=False)
        groups = groups[-1:]
    else:
        trained = model
        train_in, val_in = image_inputs(train_df, val_df, y_train, y_val, workdir, cfg, backbone, crop_pct,
                                        batch_size, device, world)

    no_graph = graph_capturable(cfg.optimizer, device, cfg.compile, world.size) if cfg.cuda_graph else "off"
    optimizer = make_optimizer(param_groups(model, groups, cfg), cfg, device, capturable=no_graph is None)
    scheduler = make_schedule(optimizer, cfg, len(train_in))
    loss_fn = make_loss(cfg, y_train, len(labels), device)
    mix = None if probe else batch_mix(cfg.augment, num_classes=len(labels))
    # timm's EMA: foreach lerp with no host sync per step, and a decay that warms up, so it helps short runs too.
    ema = ModelEmaV3(trained, decay=cfg.ema_decay, use_warmup=True) if cfg.ema_decay > 0 else None
    stopper = EarlyStopping(cfg.early_stopping.metric, cfg.early_stopping.patience, cfg.early_stopping.min_delta)
    history: list[dict] = []
    best_weights = None

    ckpt_dir = workdir / checkpoint.CHECKPOINT_DIR
    run_fingerprint = checkpoint.fingerprint(
        {**cfg.model_dump(), "background": params.clean.background, "processes": world.size},
        [workdir / split_csv("train"), workdir / split_csv("val")])
    start = 1
    if (state := checkpoint.resumable(ckpt_dir, run_fingerprint)) is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if no_graph is None:  # loaded learning rates arrive as CPU tensors; the captured step reads GPU ones
            for group in optimizer.param_groups:
                group["lr"] = torch.as_tensor(group["lr"], device=device)
        scheduler.load_state_dict(state["scheduler"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        stopper.load_state_dict(state["stopper"])
        history, best_weights = state["history"], state["best_weights"]
        start = cfg.epochs + 1 if state["finished"] else state["epoch"] + 1
        if world.main:
            print(f"resuming from {ckpt_dir / checkpoint.LAST}: epoch {state['epoch']} of {cfg.epochs} done"
                  + (", training finished" if state["finished"] else ""))
    setup = {"processes": world.size, "batch_size": batch_size, "steps_per_epoch": len(train_in),
             "input": "features" if probe else "cache" if isinstance(train_in, TensorBatches) else "loader",
             "cuda_graph": no_graph is None}
    if world.main:
        print(f"train: {cfg.strategy} of {cfg.backbone} on {device}, {setup}"
              + (f" (CUDA graph off: {no_graph})" if no_graph not in (None, "off") else ""))

    trainable_now, step = -1, None
    for epoch in range(start, cfg.epochs + 1):
        order_gen, augment_gen = seed_epoch(cfg.seed, epoch, world.rank, device)
        count = trainable_groups(cfg, epoch, len(groups))
        if count != trainable_now:  # a new phase: new trainable set, so a new DDP wrapper and graph
            trainable_params = set_trainable(trained, _names_in(trained, model, groups), count)
            forward = _ddp(trained, device) if world.size > 1 else trained
            forward = torch.compile(forward) if cfg.compile else forward
            step = TrainStep(forward, loss_fn, optimizer, cfg.grad_clip, device, graph=no_graph is None)
            trainable_now = count
        reset_peak_memory(device)
        fit = train_epoch(step, trained, train_in, order_gen, augment_gen, mix, scheduler, ema, len(labels),
                          device, world, desc=f"epoch {epoch}/{cfg.epochs}")
        judged = ema.module if ema is not None else trained
        val = evaluate(judged, val_in, len(labels), device, world)
        history.append({
            "epoch": epoch, "train_loss": fit["loss"], "train_acc": fit["acc"],
            "val_loss": val["loss"], "val_acc": val["acc"], "val_macro_f1": val["macro_f1"],
            "lr": float(optimizer.param_groups[0]["lr"]), "trainable_params": trainable_params,
            "seconds": fit["seconds"], "train_img_s": fit["img_s"], "peak_memory_mb": peak_memory_mb(device),
        })
        if stopper.improved(history[-1][METRIC_COLUMNS[stopper.metric]], epoch):
            best_weights = {k: v.detach().cpu().clone() for k, v in judged.state_dict().items()}
        stop = stopper.should_stop(epoch)
        if world.main:
            print(f"epoch {epoch}/{cfg.epochs}: train loss {fit['loss']:.3f} acc {fit['acc']:.3f} | val loss "
                  f"{val['loss']:.3f} acc {val['acc']:.3f} F1 {val['macro_f1']:.3f} | {fit['img_s']:.0f} img/s, "
                  f"peak {history[-1]['peak_memory_mb']:.0f} MB"
                  + (f" | no gain for {cfg.early_stopping.patience} epochs: stopping" if stop else ""))
            state = {
                "fingerprint": run_fingerprint, "finished": stop or epoch == cfg.epochs, "epoch": epoch,
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "ema": ema.state_dict() if ema is not None else None,
                "stopper": stopper.state_dict(), "history": history, "best_weights": best_weights,
            }
            if stopper.best_epoch == epoch:
                checkpoint.save({"epoch": epoch, "model": best_weights}, ckpt_dir, checkpoint.BEST)
            checkpoint.save(state, ckpt_dir, checkpoint.LAST)
        if stop:
            break

    if not world.main:
        return {"rank": world.rank}
    return finish(params, workdir, model, trained, best_weights, backbone, crop_pct, labels, train_df,
                  features["train"] if probe else None, history, stopper, device, setup)


def finish(params, workdir, model, trained, best_weights, backbone, crop_pct, labels, train_df, train_features,
           history, stopper, device, setup) -> dict:
    """Best epoch's weights -> fresh normalization statistics -> embedding basis -> bundle and reports."""
    cfg, batch_size = resolve_inputs(params.train), setup["batch_size"]
    trained.load_state_dict(best_weights)
    alone = World()  # what follows runs in this process only
    if train_features is None:
        # BatchNorm statistics lag behind the weights during a short fine-tune; recompute them on
        # the training images as served (shuffled, so that batches mix classes).
        plain = cached_images(train_df, workdir, class_indices(train_df, labels), cfg, crop_pct, batch_size,
                              device, alone, backbone, train=True, augment=False)
        order_gen, _ = seed_epoch(cfg.seed, 0, 0, device)
        update_bn(plain.batches(order_gen), model, device)
        sequential = cached_images(train_df, workdir, class_indices(train_df, labels), cfg, crop_pct, batch_size,
                                   device, alone, backbone, train=False, augment=False)
        train_features = embed(model, sequential, device)
    val_df = read_split(workdir, "val")
    val_in = (cached_images(val_df, workdir, class_indices(val_df, labels), cfg, crop_pct, batch_size, device,
                            alone, backbone, train=False, augment=False))
    val = evaluate(model, val_in, len(labels), device, alone)
    calibration = calibrate(model, val_in, params, device)
    meta = {
        "labels": labels, "backbone": cfg.backbone, "weights": cfg.weights, "image_size": cfg.image_size,
        "mean": list(backbone.mean), "std": list(backbone.std), "crop_pct": crop_pct,
        # Uploads with transparency are composited on the colour the training images were.
        "background": list(params.clean.background),
        "temperature": calibration["temperature"], "tta": params.inference.tta,
    }
    save_bundle(workdir / MODEL_DIR, model, meta, fit_projection(train_features))

    frame = pd.DataFrame(history)
    (workdir / HISTORY_CSV).parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(workdir / HISTORY_CSV, index=False)
    plot_curves(frame, workdir / CURVES_PNG)
    steady = frame["train_img_s"].iloc[1:] if len(frame) > 1 else frame["train_img_s"]  # epoch 1 warms up
    summary = {
        "strategy": cfg.strategy, "backbone": cfg.backbone, "device": str(device), **setup,
        "epochs_run": len(frame), "best_epoch": stopper.best_epoch,
        "train_images": len(train_df), "val_acc": round(val["acc"], 4), "val_macro_f1": round(val["macro_f1"], 4),
        **calibration,
        "train_seconds": round(float(frame["seconds"].sum()), 2),
        "train_img_s": round(float(steady.mean()), 1),
        "peak_memory_mb": round(float(frame["peak_memory_mb"].max()), 1),
    }
    (workdir / SUMMARY_JSON).write_text(json.dumps(summary, indent=2))
    return summary


def calibrate(model: nn.Module, val_in, params: Params, device: torch.device) -> dict:
    """The bundle's temperature, fitted on the validation logits as the bundle will compute them
    (with its test-time augmentation); and the validation ECE without and with it."""
    logits, targets = [], []
    model.eval()
    with torch.inference_mode():
        for inputs, labels in val_in.batches():
            with autocast(device):
                out = with_tta(model(inputs).float(), inputs, params.inference.tta, lambda x: model(x).float())
            logits.append(out.cpu())
            targets.append(labels.cpu())
    logits, targets = torch.cat(logits), torch.cat(targets)
    temperature = round(fit_temperature(logits, targets), 4) if params.inference.temperature_scaling else 1.0
    logits, targets = logits.numpy(), targets.numpy()
    return {"temperature": temperature,
            "val_ece_uncalibrated": round(expected_calibration_error(softmax(logits), targets), 4),
            "val_ece": round(expected_calibration_error(softmax(logits, temperature), targets), 4)}


def train_epoch(step, trained, batches, order_gen, augment_gen, mix, scheduler, ema, num_classes, device, world,
                desc) -> dict:
    """One pass over the training batches. Figures stay on the device until the end of the epoch
    (the progress bar reads them every few steps), so the GPU never waits for the host."""
    trained.train()
    freeze_norm_stats(trained)  # frozen layers keep their pretrained statistics
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    seen = 0
    bar = tqdm(total=len(batches), desc=desc, leave=False, disable=None if world.main else True)
    start = time.perf_counter()
    for i, (inputs, labels) in enumerate(batches.batches(order_gen, augment_gen)):
        if mix is not None:
            inputs, targets = mix(inputs, labels)
        else:
            targets = F.one_hot(labels, num_classes).float()
        loss, logits = step(inputs, targets)
        scheduler.step()
        if ema is not None:
            ema.update(trained, step=scheduler.last_epoch)  # the schedule counts optimizer steps
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
def evaluate(module: nn.Module, batches, num_classes: int, device: torch.device, world: World) -> dict:
    """Loss (plain cross-entropy), accuracy and macro F1 on every batch, summed over all processes."""
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


def image_inputs(train_df, val_df, y_train, y_val, workdir, cfg: TrainParams, backbone, crop_pct, batch_size,
                 device, world):
    """Training and validation batches: from the uint8 cache with batch augmentation on the
    training device, or from a DataLoader with per-image torchvision transforms."""
    weights = sample_weights(cfg, y_train)
    if uses_image_cache(cfg):
        train_in = cached_images(train_df, workdir, y_train, cfg, crop_pct, batch_size, device, world, backbone,
                                 train=True, augment=True, weights=weights)
        val_in = cached_images(val_df, workdir, y_val, cfg, crop_pct, batch_size, device, world, backbone,
                               train=False, augment=False)
        return train_in, val_in
    train_tf = train_transform(cfg.image_size, backbone.mean, backbone.std, cfg.augment)
    eval_tf = eval_transform(cfg.image_size, backbone.mean, backbone.std, crop_pct)
    return (LoaderBatches(ImageFiles(train_df, workdir, y_train, train_tf), batch_size, device, world,
                          cfg.num_workers, train=True, weights=weights),
            LoaderBatches(ImageFiles(val_df, workdir, y_val, eval_tf), batch_size, device, world,
                          cfg.num_workers, train=False))


def cached_images(frame, workdir, targets, cfg: TrainParams, crop_pct, batch_size, device, world, backbone,
                  train: bool, augment: bool, weights=None) -> TensorBatches:
    """Batches from the image cache, augmented or as evaluation sees them (centre crop, normalize)."""
    side = cache_side(cfg.image_size, crop_pct)
    files = [workdir / f for f in frame["file"]]
    if not world.main:
        world.barrier()  # the first process decodes, the others then open its file
    pixels = image_cache(files, side, workdir / CACHE_DIR, desc=f"caching {len(files)} images at {side} px")
    if world.main:
        world.barrier()
    if augment:
        augmenter = BatchAugment(cfg.image_size, cfg.augment, backbone.mean, backbone.std)

        def prepare(batch, generator):
            return augmenter(as_nchw(batch), generator)
    else:
        top = round((side - cfg.image_size) / 2)  # as torchvision's CenterCrop

        def prepare(batch, generator):
            crop = as_nchw(batch)[:, :, top:top + cfg.image_size, top:top + cfg.image_size]
            return normalize(crop, backbone.mean, backbone.std)
    return TensorBatches(torch.from_numpy(pixels), targets, batch_size, device, world, prepare, train=train,
                         weights=weights)


def probe_features(model, frame, workdir, cfg: TrainParams, backbone, crop_pct, device, world) -> torch.Tensor:
    """Frozen backbone features of a split's images, computed once per dataset version and backbone."""
    side = cache_side(cfg.image_size, crop_pct)
    files = [workdir / f for f in frame["file"]]
    if cfg.weights in ("imagenet", "none"):
        weights_id = cfg.weights
    else:  # size and modification time, as the image cache keys files (not the access time)
        stat = Path(cfg.weights).stat()
        weights_id = f"{cfg.weights}:{stat.st_size}:{stat.st_mtime_ns}"
    key = checkpoint.digest([cfg.backbone, weights_id, cfg.image_size, crop_pct, cache_key(files, side)])
    path = workdir / FEATURE_DIR / f"{key[:20]}.pt"
    if world.main and not path.is_file():
        alone = World()
        images = cached_images(frame, workdir, torch.zeros(len(frame), dtype=torch.long), cfg, crop_pct, 256,
                               device, alone, backbone, train=False, augment=False)
        features = embed(model, images, device)
        checkpoint.save(features, path.parent, path.name)
        prune(path.parent, "*.pt", KEEP)
    world.barrier()
    return torch.load(path, map_location=device, weights_only=True)


@torch.inference_mode()
def embed(model: nn.Module, batches: TensorBatches, device: torch.device) -> torch.Tensor:
    """Penultimate-layer features of every batch, in order, as float32 on the CPU."""
    model.eval()
    parts = []
    for inputs, _ in batches.batches():
        with autocast(device):
            parts.append(pooled_features(model, inputs).float().cpu())
    return torch.cat(parts)


def seed_epoch(seed: int, epoch: int, rank: int, device: torch.device) -> tuple[torch.Generator, torch.Generator]:
    """Random streams of one epoch, derived from (seed, epoch, process) alone, so a resumed run
    draws what an uninterrupted one would. The order is the same on every process (each takes its
    own shard of it); augmentation, dropout and mixing differ between processes."""
    own = seed * 1_000_003 + epoch * 1_009 + rank
    torch.manual_seed(own)  # dropout, stochastic depth, mixup/cutmix draws
    order = torch.Generator().manual_seed(seed * 1_000_003 + epoch * 1_009)
    augment = torch.Generator(device).manual_seed(own)
    return order, augment


def _as_is(batch: torch.Tensor, generator=None) -> torch.Tensor:
    return batch


def _names_in(trained: nn.Module, model: nn.Module, groups: list[list[str]]) -> list[list[str]]:
    """Layer groups named relative to `trained` (the head alone for a linear probe)."""
    if trained is model:
        return groups
    own = {id(p): name for name, p in trained.named_parameters()}
    full = dict(model.named_parameters())
    return [[own[id(full[name])] for name in group if id(full[name]) in own] for group in groups]


def _ddp(module: nn.Module, device: torch.device) -> DistributedDataParallel:
    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


def pick_device(choice: str, world: World = World()) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device: cuda was asked for but no CUDA GPU is visible; use auto or cpu")
    if choice != "cpu" and torch.cuda.is_available():
        return torch.device("cuda", world.local_rank)
    return torch.device("cpu")


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float:
    """GPU: peak allocated by tensors this epoch. CPU: the process's peak resident memory so far."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def read_split(workdir: Path, name: str) -> pd.DataFrame:
    path = workdir / split_csv(name)
    if not path.is_file():
        raise UserError(f"{split_csv(name)} not found; run the split stage first (dvc repro split)")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    if frame.empty:
        raise UserError(f"{split_csv(name)} is empty; add images or lower split.val / split.test")
    return frame


def class_indices(frame: pd.DataFrame, labels: list[str], split: str = "validation") -> torch.Tensor:
    unknown = sorted(set(frame["label"]) - set(labels))
    if unknown:
        raise UserError(f"classes {unknown} have {split} images but no training images; add training images "
                        "and re-run dvc repro train")
    index = {label: i for i, label in enumerate(labels)}
    return torch.tensor([index[label] for label in frame["label"]], dtype=torch.long)


def plot_curves(history: pd.DataFrame, out: Path) -> None:
    """Loss and accuracy per epoch as a PNG: readable offline, unlike the Vega plots of `dvc plots`."""
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    for split in ("train", "val"):
        loss_ax.plot(history["epoch"], history[f"{split}_loss"], marker="o", label=split)
        acc_ax.plot(history["epoch"], history[f"{split}_acc"], marker="o", label=split)
    acc_ax.plot(history["epoch"], history["val_macro_f1"], marker=".", linestyle="--", label="val macro F1")
    loss_ax.set(title="Loss", xlabel="epoch", ylabel="cross-entropy")
    acc_ax.set(title="Accuracy", xlabel="epoch", ylabel="accuracy", ylim=(0, 1.02))
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend()
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    run_stage("train", run)
