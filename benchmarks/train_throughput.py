"""Training img/s of the train stage against a plain DataLoader loop and the model's own limit.

For one backbone and resolution, on synthetic JPEGs written to a scratch folder (class folders,
random shapes and colours with grain, JPEG quality 90 at --source-size), times:
    stage       tasks.train.run as DVC runs it (strategy full, default augmentation): the mean
                img/s of the epochs after the first, and the wall time with the one-off image cache
    dataloader  the tutorial loop: ImageFolder + PIL transforms + DataLoader workers, AdamW, bf16
                autocast and channels_last on CUDA; steady-state batches only
    limit       the same model on inputs already in device memory, eager and (CUDA) graph-captured
                with the stage's TrainStep: what training could reach with free input
and prints one JSON line. Usage:
    python benchmarks/train_throughput.py --backbone tf_efficientnet_lite0 --image-size 112
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import shutil
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import timm
import torch
import torchvision
import yaml
from PIL import Image, ImageDraw
from torch import nn
from torch.utils.data import DataLoader
from torchvision import transforms

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tasks import train  # noqa: E402
from tasks.common.config import Params, parse_params  # noqa: E402
from tasks.common.parallel import map_chunks  # noqa: E402
from tasks.common.paths import split_csv  # noqa: E402
from tasks.common.threads import available_cores  # noqa: E402
from tasks.model.backbones import create_backbone, input_config  # noqa: E402
from tasks.model.device import pick_device  # noqa: E402
from tasks.training.batch_augment import normalize, uses_image_cache  # noqa: E402
from tasks.training.image_cache import CACHE_DIR, cache_side, image_cache  # noqa: E402
from tasks.training.optim import make_loss, make_optimizer  # noqa: E402
from tasks.training.step import TrainStep, auto_batch_size, why_not_capturable  # noqa: E402
from tasks.training.strategies import layer_groups, param_groups  # noqa: E402

PARAMS_YAML = Path(__file__).resolve().parents[1] / "params.yaml"
CLASSES = 10
VAL_EVERY = 50  # every 50th image of a class is a validation image (2%)
WARMUP = 10  # batches before the clock starts: worker start-up, cuDNN autotuning, graph capture


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_images(seeds: list[int], folder: Path, side: int) -> list[int]:
    """A few random shapes on a random background, with grain: every file differs and decodes like a photo."""
    grain = np.random.default_rng(0).normal(0, 8, (side + 64, side + 64, 3)).astype(np.float32)
    for seed in seeds:
        rng = np.random.default_rng(seed)
        img = Image.new("RGB", (side, side), tuple(int(c) for c in rng.integers(0, 256, 3)))
        draw = ImageDraw.Draw(img)
        for _ in range(rng.integers(1, 4)):
            box = sorted(rng.integers(0, side, 2)), sorted(rng.integers(0, side, 2))
            xy = [box[0][0], box[1][0], box[0][1] + 1, box[1][1] + 1]
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            (draw.ellipse, draw.rectangle)[int(rng.integers(0, 2))](xy, fill=colour)
        dy, dx = rng.integers(0, 64, 2)
        pixels = np.clip(np.asarray(img, dtype=np.float32) + grain[dy:dy + side, dx:dx + side], 0, 255)
        path = folder / f"class_{seed % CLASSES}" / f"img_{seed:06d}.jpg"
        Image.fromarray(pixels.astype(np.uint8)).save(path, "JPEG", quality=90)
    return seeds


def write_dataset(workdir: Path, count: int, side: int) -> None:
    """Images under workdir/images/<class>/ and data/split/{train,val}.csv as the split stage writes them."""
    folder = workdir / "images"
    for c in range(CLASSES):
        (folder / f"class_{c}").mkdir(parents=True, exist_ok=True)
    map_chunks(partial(make_images, folder=folder, side=side), list(range(count)), f"writing {count} JPEGs")
    rows = pd.DataFrame([{"path": f"class_{s % CLASSES}/img_{s:06d}.jpg", "label": f"class_{s % CLASSES}",
                          "file": f"images/class_{s % CLASSES}/img_{s:06d}.jpg"} for s in range(count)])
    is_val = (np.arange(count) // CLASSES) % VAL_EVERY == 0
    (workdir / "data/split").mkdir(parents=True, exist_ok=True)
    rows[~is_val].to_csv(workdir / split_csv("train"), index=False)
    rows[is_val].to_csv(workdir / split_csv("val"), index=False)


def stage_params(args) -> Params:
    """params.yaml with the benchmark's train settings; augmentation and the rest as the project ships them."""
    raw = yaml.safe_load(PARAMS_YAML.read_text())
    raw["train"].update(
        backbone=args.backbone, weights=args.weights, image_size=args.image_size, epochs=args.epochs,
        batch_size=args.batch_size, strategy="full", device="auto", cuda_graph=not args.no_cuda_graph,
        compile=False, early_stopping={**raw["train"]["early_stopping"], "patience": 0})
    return parse_params(raw)


def build_cache(workdir: Path, params: Params) -> float | None:
    """Build the stage's image cache beforehand, so that its one-off cost shows apart from training."""
    cfg = params.train
    if not uses_image_cache(cfg):
        return None
    crop_pct = input_config(cfg.backbone).crop_pct if cfg.eval_crop_pct == "auto" else cfg.eval_crop_pct
    start = time.perf_counter()
    for name in ("train", "val"):
        frame = pd.read_csv(workdir / split_csv(name), dtype=str, keep_default_na=False)
        image_cache([workdir / f for f in frame["file"]], cache_side(cfg.image_size, crop_pct), workdir / CACHE_DIR)
    return time.perf_counter() - start


def bench_stage(workdir: Path, params: Params) -> dict:
    """The train stage end to end; its own img/s figure already leaves the first epoch out."""
    cache_s = build_cache(workdir, params)
    start = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries the JSON line only
        summary = train.run(params, workdir)
    stage_s = time.perf_counter() - start
    if cache_s is not None and len(list((workdir / CACHE_DIR).glob("*.u8"))) != 2:
        cache_s = None  # the stage built caches of its own: its wall time holds them
    keep = ("train_img_s", "input", "batch_size", "cuda_graph", "device", "steps_per_epoch", "epochs_run",
            "train_seconds", "peak_memory_mb")
    return {**{k: summary[k] for k in keep}, "cache_s": None if cache_s is None else round(cache_s, 2),
            "wall_s": round(stage_s + (cache_s or 0.0), 2)}


def bench_dataloader(workdir: Path, args, batch_size: int, device: torch.device) -> dict:
    """The loop most tutorials write: decode and augment every image in DataLoader workers."""
    backbone = create_backbone(args.backbone, args.weights, CLASSES)
    cuda = device.type == "cuda"
    dataset = torchvision.datasets.ImageFolder(workdir / "images", transforms.Compose([
        transforms.RandomResizedCrop(args.image_size), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
        transforms.Normalize(backbone.mean, backbone.std)]))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=args.workers, pin_memory=cuda,
                        persistent_workers=args.workers > 0, drop_last=True)
    model = backbone.model.to(device, memory_format=torch.channels_last).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=cuda)
    loss_fn = nn.CrossEntropyLoss()
    warmup = min(WARMUP, len(loader) // 2)
    steps = min(args.steps, len(loader) - warmup)
    if steps < 1:
        return {"img_s": None, "batch_size": batch_size, "note": "fewer than 2 batches per epoch"}
    start = 0.0
    for i, (images, labels) in enumerate(loader):
        if i == warmup:
            sync(device)
            start = time.perf_counter()
        if i == warmup + steps:
            break
        images = images.to(device, non_blocking=True, memory_format=torch.channels_last)
        labels = labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss = loss_fn(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    sync(device)
    seconds = time.perf_counter() - start
    return {"img_s": round(steps * batch_size / seconds, 1), "batch_size": batch_size, "workers": args.workers,
            "steps": steps}


def limit_step(args, params: Params, device: torch.device, batch: int, graph: bool) -> float:
    """img/s of TrainStep on one batch of normalized synthetic images that never leaves the device."""
    cfg = params.train
    torch.manual_seed(0)
    backbone = create_backbone(args.backbone, args.weights, CLASSES)
    model = backbone.model.to(device, memory_format=torch.channels_last).train()
    optimizer = make_optimizer(param_groups(model, layer_groups(model), cfg), cfg, device, capturable=graph)
    labels = torch.randint(0, CLASSES, (batch,), device=device)
    step = TrainStep(model, make_loss(cfg, labels, CLASSES, device), optimizer, cfg.grad_clip, device, graph=graph)
    pixels = torch.randint(0, 256, (batch, 3, args.image_size, args.image_size), dtype=torch.uint8, device=device)
    inputs, targets = normalize(pixels, backbone.mean, backbone.std), nn.functional.one_hot(labels, CLASSES).float()
    for _ in range(min(WARMUP, args.steps)):
        step(inputs, targets)
    sync(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step(inputs, targets)
    sync(device)
    return round(batch * args.steps / (time.perf_counter() - start), 1)


def bench_limit(args, params: Params, device: torch.device) -> dict:
    """Eager and graph-captured steps at each batch size; a batch that does not fit is "oom"."""
    modes = ["eager"] + (["graph"] if why_not_capturable(params.train.optimizer, device, False, 1) is None else [])
    out: dict = {mode: {} for mode in ("eager", "graph")}
    for batch in args.limit_batches:
        for mode in modes:
            try:
                out[mode][batch] = limit_step(args, params, device, batch, graph=mode == "graph")
            except torch.cuda.OutOfMemoryError:
                out[mode][batch] = "oom"
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            log(f"limit: {mode} batch {batch}: {out[mode][batch]} img/s")
    return out


def ratio(a, b) -> float | None:
    return round(a / b, 3) if a and b else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python benchmarks/train_throughput.py", description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="tf_efficientnet_lite0", help="a timm or torchvision model name")
    parser.add_argument("--weights", default="none", help="none | imagenet | checkpoint path (img/s ignores values)")
    parser.add_argument("--image-size", type=int, default=112, help="train.image_size (px)")
    parser.add_argument("--source-size", type=int, help="side of the generated JPEGs (default: 2x --image-size)")
    parser.add_argument("--images", type=int, default=20000, help="synthetic JPEGs to write")
    parser.add_argument("--epochs", type=int, default=3, help="train.epochs of the stage run")
    parser.add_argument("--batch-size", type=lambda v: v if v == "auto" else int(v), default="auto",
                        help="train.batch_size: a number or auto (the stage's choice, also used by the loop)")
    parser.add_argument("--no-cuda-graph", action="store_true", help="the stage steps eagerly on CUDA too")
    parser.add_argument("--workers", type=int, default=max(1, available_cores() - 2), help="DataLoader workers")
    parser.add_argument("--steps", type=int, default=100, help="timed batches of the loop and of each limit run")
    parser.add_argument("--limit-batches", type=lambda v: [int(b) for b in v.split(",")],
                        help="comma-separated (default: 128,256,512,1024 on CUDA; 32,64 on the CPU)")
    parser.add_argument("--skip-stage", action="store_true", help="do not time the train stage")
    parser.add_argument("--skip-dataloader", action="store_true", help="do not time the DataLoader loop")
    parser.add_argument("--skip-limit", action="store_true", help="do not time the model's own limit")
    parser.add_argument("--workdir", type=Path, help="where the scratch folder goes (default: the system temp)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args(argv)
    device = pick_device("auto")
    cuda = device.type == "cuda"
    args.limit_batches = args.limit_batches or ([128, 256, 512, 1024] if cuda else [32, 64])
    if cuda:
        torch.backends.cudnn.benchmark = True
    params = stage_params(args)
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="train_throughput_", dir=args.workdir))
    result = {"device": torch.cuda.get_device_name(device) if cuda else f"cpu ({available_cores()} cores)",
              "torch": torch.__version__, "torchvision": torchvision.__version__, "timm": timm.__version__,
              "backbone": args.backbone, "image_size": args.image_size, "images": args.images,
              "stage": None, "dataloader": None, "limit": None, "limit_img_s": None}
    try:
        if not (args.skip_stage and args.skip_dataloader):
            write_dataset(workdir, args.images, args.source_size or 2 * args.image_size)
        batch_size = args.batch_size
        if not args.skip_stage:
            log(f"stage: {args.epochs} epochs of {args.backbone} at {args.image_size} px in {workdir}")
            result["stage"] = bench_stage(workdir, params)
            batch_size = result["stage"]["batch_size"]
            log(f"stage: {result['stage']}")
        if not args.skip_dataloader:
            if batch_size == "auto":
                model = create_backbone(args.backbone, args.weights, CLASSES).model.to(device)
                batch_size = auto_batch_size(model.to(memory_format=torch.channels_last), args.image_size, device)
            result["dataloader"] = bench_dataloader(workdir, args, batch_size, device)
            log(f"dataloader: {result['dataloader']}")
        if not args.skip_limit:
            result["limit"] = bench_limit(args, params, device)
            figures = [v for mode in result["limit"].values() for v in mode.values() if v != "oom"]
            result["limit_img_s"] = max(figures, default=None)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            log(f"kept {workdir}")
    stage_img_s = result["stage"] and result["stage"]["train_img_s"]
    result["stage_vs_limit"] = ratio(stage_img_s, result["limit_img_s"])
    result["stage_vs_dataloader"] = ratio(stage_img_s, result["dataloader"] and result["dataloader"]["img_s"])
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
