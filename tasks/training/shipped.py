"""The model a run ships, and what is asked of it: probabilities, a score, features, a temperature.

The train stage writes it into the bundle; the label folds (tasks/labels/folds.py) and the tuning
trials (tasks/tuning/objective.py) judge it, so that what they measure is what would ship. Its
weights are decided here, once for all three:

- always the judged weights of the selected epoch: the EMA copy when train.ema_decay > 0, else the
  raw ones. Validation judged those every epoch; the raw weights of an EMA run were never judged.
- the selected epoch is the best by train.early_stopping.metric (select="best"), as the train stage
  ships and as a trial must score to rate the recipe the train stage would ship with it. The label
  folds select the last epoch (select="last"): the best would be picked by the held-out fold they
  then judge, leaking its labels into the predictions meant to question them.
- then BatchNorm statistics recomputed on the training images: they lag behind the weights during
  a short fine-tune, and a model scored without that misjudges short fine-tunes on small data.

All of it runs in this process alone, after training (data-parallel or not).
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.optim.swa_utils import update_bn

from tasks.common.config import TrainParams
from tasks.model.device import autocast
from tasks.training.batches import TensorBatches
from tasks.training.distributed import World
from tasks.training.engine import FittedRun, fit_frames, targets
from tasks.training.inputs import cached_images, embed, probe_features
from tasks.training.loop import calibrate, seed_epoch, validate

Select = Literal["best", "last"]


class ShippedModel:
    """A fitted run's network with the weights the train stage ships (see the module docstring)."""

    def __init__(self, run: FittedRun, train_df: pd.DataFrame, labels: list[str], select: Select):
        self.run, self.labels = run, labels
        self._ctx = run.ctx.alone()
        state = run.state
        state.trained.load_state_dict(state.best_weights if select == "best" else state.judged.state_dict())
        self._refresh_norm_stats(train_df)

    @classmethod
    def fit(cls, cfg: TrainParams, workdir: Path, world: World, train_df: pd.DataFrame, val_df: pd.DataFrame,
            labels: list[str], run_fingerprint: str, ckpt_dir: Path, select: Select = "best", name: str = "train",
            on_epoch: Callable[[dict], None] | None = None) -> ShippedModel | None:
        """Fit as tasks.training.engine.fit_frames does (the same arguments), then ship. None in the
        processes of a data-parallel run other than the first, which alone ships."""
        run = fit_frames(cfg, workdir, world, train_df, val_df, labels, run_fingerprint, ckpt_dir, name, on_epoch)
        return cls(run, train_df, labels, select) if world.main else None

    @property
    def model(self) -> nn.Module:
        """The whole network, as the bundle saves it."""
        return self.run.state.model

    @torch.inference_mode()
    def probabilities(self, frame: pd.DataFrame) -> np.ndarray:
        """Softmax outputs (N, C) on the frame's images, as evaluation sees them; the frame's labels,
        if any, are not read (a test split may hold classes in any order)."""
        self.model.eval()
        parts = []
        for inputs, _ in self._images(frame).batches():
            with autocast(self._ctx.device):
                parts.append(torch.softmax(self.model(inputs).float(), dim=1).cpu())
        return torch.cat(parts).numpy()

    def score(self, frame: pd.DataFrame) -> dict:
        """Loss, accuracy and macro F1 on the frame (tasks.training.loop.validate)."""
        return validate(self.model, self._images(frame, labelled=True), self._ctx)

    def calibrate(self, frame: pd.DataFrame, tta: str, temperature_scaling: bool) -> dict:
        """The bundle's temperature fitted on the frame, and its ECE without and with it (tasks.training.loop.calibrate)."""
        return calibrate(self.model, self._images(frame, labelled=True), tta, temperature_scaling, self._ctx.device)

    def features(self, frame: pd.DataFrame) -> torch.Tensor:
        """Penultimate-layer features of the frame's images (the bundle's embedding basis is fitted on
        the training images'). A linear probe's backbone never changed: its features are the ones its
        training cached."""
        if self.run.train_features is not None:
            return probe_features(self._ctx, self.model, frame)
        return embed(self.model, self._images(frame), self._ctx.device)

    def _images(self, frame: pd.DataFrame, labelled: bool = False) -> TensorBatches:
        """The frame's images as evaluation sees them (centre crop, normalized), with class targets
        when `labelled`."""
        y = targets(frame, self.labels) if labelled else torch.zeros(len(frame), dtype=torch.long)
        return cached_images(self._ctx, frame, y, train=False, augment=False)

    def _refresh_norm_stats(self, train_df: pd.DataFrame) -> None:
        """Recompute BatchNorm statistics on the training images as served, shuffled so that batches
        mix classes. Nothing to do for a linear probe, whose backbone keeps its pretrained statistics."""
        if self.run.train_features is not None:
            return
        order, _ = seed_epoch(self._ctx.cfg.seed, 0, 0, self._ctx.device)
        batches = cached_images(self._ctx, train_df, targets(train_df, self.labels), train=True, augment=False)
        update_bn(batches.batches(order), self.model, self._ctx.device)
