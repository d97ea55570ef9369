"""Train stage: fine-tune an ImageNet-pretrained backbone on the train split.

Reads data/split/{train,val}.csv and writes
    models/model.safetensors, models/model.json   the bundle (see tasks/bundle.py)
    reports/train/history.csv                    per-epoch loss/accuracy/throughput (dvc plots)
    reports/train/summary.json                   final figures of the run
On CUDA it trains in bf16 autocast with channels_last; otherwise on the CPU in float32.
"""
from __future__ import annotations

import json
import random
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from tasks.augment import batch_mix, eval_transform, train_transform
from tasks.backbones import create_backbone, pooled_features
from tasks.bundle import fit_projection, save_bundle
from tasks.cli import run_stage
from tasks.config import Params, TrainParams, UserError
from tasks.images import open_rgb
from tasks.split import split_csv

MODEL_DIR = Path("models")
HISTORY_CSV = Path("reports/train/history.csv")
CURVES_PNG = Path("reports/train/curves.png")
SUMMARY_JSON = Path("reports/train/summary.json")


class ImageFolderSplit(Dataset):
    """The images of one split manifest, decoded to RGB and transformed on access."""

    def __init__(self, frame: pd.DataFrame, workdir: Path, labels: list[str], transform):
        index = {label: i for i, label in enumerate(labels)}
        self.files = [workdir / f for f in frame["file"]]
        self.targets = [index[label] for label in frame["label"]]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        return self.transform(open_rgb(self.files[i])), self.targets[i]


def pick_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device: cuda was asked for but no CUDA GPU is visible; use auto or cpu")
    return torch.device("cuda" if choice != "cpu" and torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def read_split(workdir: Path, name: str) -> pd.DataFrame:
    path = workdir / split_csv(name)
    if not path.is_file():
        raise UserError(f"{split_csv(name)} not found; run the split stage first (dvc repro split)")
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def run_epoch(model, loader, device, optimizer=None, scheduler=None, mix=None, desc="") -> dict:
    """One pass over `loader`; trains when an optimizer is given. Returns loss, accuracy, img/s.

    `mix` (see tasks.augment.batch_mix) turns each batch's labels into soft targets, which
    CrossEntropyLoss takes as they are; accuracy then counts the dominant class of each target.
    """
    training = optimizer is not None
    model.train(training)
    loss_fn = nn.CrossEntropyLoss()
    total_loss, correct, seen, start = 0.0, 0, 0, time.perf_counter()
    bar = tqdm(loader, desc=desc, leave=False, disable=None if training else True)
    with torch.set_grad_enabled(training):
        for images, targets in bar:
            if mix is not None:
                images, targets = mix(images, targets)
            images = images.to(device, non_blocking=True, memory_format=torch.channels_last)
            targets = targets.to(device, non_blocking=True)
            hard_targets = targets.argmax(1) if targets.ndim == 2 else targets
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                logits = model(images)
                loss = loss_fn(logits.float(), targets)
            if training:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
            total_loss += loss.item() * len(targets)
            correct += (logits.argmax(1) == hard_targets).sum().item()
            seen += len(targets)
            bar.set_postfix(loss=f"{total_loss / seen:.3f}", img_s=f"{seen / (time.perf_counter() - start):.0f}")
    seconds = time.perf_counter() - start
    return {"loss": total_loss / seen, "acc": correct / seen, "seconds": seconds, "img_s": seen / seconds}


@torch.inference_mode()
def embed_all(model, loader, device) -> torch.Tensor:
    model.eval()
    parts = [pooled_features(model, x.to(device, memory_format=torch.channels_last)).float().cpu() for x, _ in loader]
    return torch.cat(parts)


def make_loader(dataset: Dataset, cfg: TrainParams, shuffle: bool, generator=None) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        shuffle=shuffle,
        generator=generator,
        num_workers=cfg.num_workers,
        persistent_workers=cfg.num_workers > 0,
        pin_memory=torch.cuda.is_available(),
    )


def plot_curves(history: pd.DataFrame, out: Path) -> None:
    """Loss and accuracy per epoch as a PNG: readable offline, unlike the Vega plots of `dvc plots`."""
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    for split in ("train", "val"):
        loss_ax.plot(history["epoch"], history[f"{split}_loss"], marker="o", label=split)
        acc_ax.plot(history["epoch"], history[f"{split}_acc"], marker="o", label=split)
    loss_ax.set(title="Loss", xlabel="epoch", ylabel="cross-entropy")
    acc_ax.set(title="Accuracy", xlabel="epoch", ylabel="accuracy", ylim=(0, 1.02))
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend()
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def run(params: Params, workdir: Path = Path(".")) -> dict:
    cfg = params.train
    device = pick_device(cfg.device)
    generator = seed_everything(cfg.seed)
    train_df, val_df = read_split(workdir, "train"), read_split(workdir, "val")
    labels = sorted(train_df["label"].unique())

    backbone = create_backbone(cfg.backbone, cfg.weights, num_classes=len(labels))
    model = backbone.model.to(device, memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    train_tf = train_transform(cfg.image_size, backbone.mean, backbone.std, cfg.augment)
    crop_pct = backbone.crop_pct if cfg.eval_crop_pct == "auto" else cfg.eval_crop_pct
    eval_tf = eval_transform(cfg.image_size, backbone.mean, backbone.std, crop_pct)
    mix = batch_mix(cfg.augment, num_classes=len(labels))
    train_loader = make_loader(ImageFolderSplit(train_df, workdir, labels, train_tf), cfg, True, generator)
    val_loader = make_loader(ImageFolderSplit(val_df, workdir, labels, eval_tf), cfg, False)

    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=cfg.lr, total_steps=cfg.epochs * len(train_loader), pct_start=0.15
    )
    history = []
    for epoch in range(1, cfg.epochs + 1):
        train = run_epoch(model, train_loader, device, optimizer, scheduler, mix, desc=f"epoch {epoch}/{cfg.epochs}")
        val = run_epoch(model, val_loader, device)
        history.append({
            "epoch": epoch,
            "train_loss": train["loss"], "train_acc": train["acc"],
            "val_loss": val["loss"], "val_acc": val["acc"],
            "seconds": train["seconds"], "train_img_s": train["img_s"],
        })
        print(f"epoch {epoch}/{cfg.epochs}: train loss {train['loss']:.3f} acc {train['acc']:.3f} | "
              f"val loss {val['loss']:.3f} acc {val['acc']:.3f} | {train['img_s']:.0f} img/s")

    # BatchNorm statistics lag behind the weights during a short fine-tune; recompute them once
    # on the training images as served (no augmentation), then fit the embedding basis for drift
    # monitoring (PCA of the training images' features).
    # Shuffled, so that each batch mixes classes like the batches the statistics are meant for.
    plain_train = make_loader(ImageFolderSplit(train_df, workdir, labels, eval_tf), cfg, True, generator)
    torch.optim.swa_utils.update_bn(plain_train, model, device)
    projection = fit_projection(embed_all(model, plain_train, device))
    val_acc = run_epoch(model, val_loader, device)["acc"]
    meta = {
        "labels": labels,
        "backbone": cfg.backbone,
        "weights": cfg.weights,
        "image_size": cfg.image_size,
        "mean": list(backbone.mean),
        "std": list(backbone.std),
        "crop_pct": crop_pct,
        # Uploads with transparency are composited on the colour the training images were.
        "background": list(params.clean.background),
    }
    save_bundle(workdir / MODEL_DIR, model, meta, projection)

    (workdir / HISTORY_CSV).parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(history).to_csv(workdir / HISTORY_CSV, index=False)
    plot_curves(pd.DataFrame(history), workdir / CURVES_PNG)
    summary = {
        "device": str(device),
        "epochs": cfg.epochs,
        "train_images": len(train_df),
        "val_acc": round(val_acc, 4),
        "train_seconds": round(sum(h["seconds"] for h in history), 2),
        "train_img_s": round(float(np.mean([h["train_img_s"] for h in history])), 1),
    }
    (workdir / SUMMARY_JSON).write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    run_stage("train", run)
