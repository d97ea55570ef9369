"""Train stage: fine-tune a pretrained backbone on the train split (docs/training.md).

Reads data/split/{train,val}.csv and writes
    models/model.safetensors, models/model.json   the bundle (tasks/model/bundle.py), from the best epoch
    checkpoints/last.pt, checkpoints/best.pt      a killed run resumes from last.pt (tasks/training/checkpoint.py)
    reports/train/history.csv                    per epoch: loss, accuracy, macro F1, learning rate,
                                                 trainable parameters, img/s, peak memory (dvc plots)
    reports/train/curves.png, summary.json
Read top to bottom: `train` fits one run (tasks/training/engine.py: set up, resume an interrupted
run, fit epoch by epoch), ships its best epoch (tasks/training/shipped.py), and `finish` turns that
into the bundle and the reports. The engine (strategies, batches, the step, the optimizer,
checkpoints) is in tasks/training/. With `train.processes` (or `train.nodes`) above 1 the stage
starts itself under torchrun and trains data-parallel (tasks/training/distributed.py).
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from tasks.common.cli import run_stage
from tasks.common.config import Params
from tasks.common.paths import CURVES_PNG, MODEL_DIR, split_csv
from tasks.data.splits import read_split
from tasks.model.backbones import resolve_inputs
from tasks.model.bundle import fit_projection, save_bundle
from tasks.training import checkpoint
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
from tasks.training.shipped import ShippedModel

PARAMS = ["train", "inference.temperature_scaling", "inference.tta", "clean.background"]  # the bundle keeps the last three

HISTORY_CSV = Path("reports/train/history.csv")
SUMMARY_JSON = Path("reports/train/summary.json")


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
    """Fit on train, validating on val (picking up an interrupted run of the same program), then
    write the bundle from the best epoch."""
    cfg = resolve_inputs(params.train)  # `auto` image size and crop: the backbone's own
    train_df, val_df = read_split(workdir, "train"), read_split(workdir, "val")
    labels = sorted(train_df["label"].unique())
    run_fingerprint = checkpoint.fingerprint(
        {**cfg.model_dump(), "background": params.clean.background, "processes": world.size},
        [workdir / split_csv("train"), workdir / split_csv("val")])
    shipped = ShippedModel.fit(cfg, workdir, world, train_df, val_df, labels, run_fingerprint,
                               workdir / checkpoint.CHECKPOINT_DIR)
    if shipped is None:  # another process of a data-parallel run: the first one ships
        return {"rank": world.rank}
    return finish(params, shipped, labels, train_df, val_df)


def finish(params: Params, shipped: ShippedModel, labels: list[str], train_df: pd.DataFrame,
           val_df: pd.DataFrame) -> dict:
    """The shipped model's embedding basis and temperature -> the bundle and the reports."""
    ctx, state = shipped.run.ctx, shipped.run.state
    cfg, model, device = ctx.cfg, shipped.model, ctx.device
    train_features = shipped.features(train_df)
    val = shipped.score(val_df)
    calibration = shipped.calibrate(val_df, params.inference.tta, params.inference.temperature_scaling)
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
        "strategy": cfg.strategy, "backbone": cfg.backbone, "device": str(device), **shipped.run.setup,
        "epochs_run": len(history), "best_epoch": state.stopper.best_epoch,
        "train_images": len(train_df), "val_acc": round(val["acc"], 4), "val_macro_f1": round(val["macro_f1"], 4),
        **calibration,
        "train_seconds": round(float(history["seconds"].sum()), 2),
        "train_img_s": round(float(steady.mean()), 1),
        "peak_memory_mb": round(float(history["peak_memory_mb"].max()), 1),
    }
    (ctx.workdir / SUMMARY_JSON).write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    run_stage("train", run_or_launch)
