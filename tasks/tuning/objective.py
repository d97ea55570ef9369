"""One trial's score: the train stage's own engine on one recipe, never on the test split.

With tune.folds = 1 a trial fine-tunes on train.csv, reporting every epoch's validation metric on
val.csv so the pruner can stop it early, and is scored by that metric of the model the train stage
would ship (tasks/training/shipped.py). With tune.folds = K > 1 (small data, where one val split is
luck) train and val are pooled into K stratified folds, duplicate groups kept whole; the trial is
scored by the mean of the K held-out scores, reporting the running mean after each fold, and keeps
each fold's value and the spread as user attributes.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import optuna
import pandas as pd

from tasks.common.config import TrainParams
from tasks.common.paths import split_csv
from tasks.model.backbones import resolve_inputs
from tasks.training import checkpoint
from tasks.training.distributed import World
from tasks.training.engine import METRIC_COLUMNS
from tasks.training.folds import kfold
from tasks.training.shipped import ShippedModel

VALIDATE_KEYS = {"accuracy": "acc", "macro_f1": "macro_f1", "loss": "loss"}  # train.early_stopping.metric


def score(trial: optuna.Trial, train: TrainParams, workdir: Path, study: str, folds: int,
          train_df: pd.DataFrame, val_df: pd.DataFrame) -> float:
    """The trial's validation metric (train.early_stopping.metric) for the recipe `train`."""
    cfg = resolve_inputs(train).model_copy(update={"processes": 1, "nodes": 1})
    labels = sorted(train_df["label"].unique())
    if folds == 1:
        return _fit(trial, cfg, workdir, study, train_df, val_df, labels, per_epoch=True)
    pool = pd.concat([train_df, val_df], ignore_index=True)
    values = []
    for fold, fit_df, held_df in kfold(pool, folds, cfg.seed, setting="tune.folds"):
        values.append(_fit(trial, cfg, workdir, study, fit_df, held_df, labels, per_epoch=False, fold=(fold, folds)))
        trial.set_user_attr("fold_values", values)
        trial.report(float(np.mean(values)), fold)
        if trial.should_prune():
            raise optuna.TrialPruned(f"fold {fold + 1}/{folds}: mean {np.mean(values):.4f} lags the other trials")
    trial.set_user_attr("fold_std", float(np.std(values)))
    return float(np.mean(values))


def _fit(trial: optuna.Trial, cfg: TrainParams, workdir: Path, study: str, fit_df: pd.DataFrame,
         held_df: pd.DataFrame, labels: list[str], per_epoch: bool, fold: tuple[int, int] | None = None) -> float:
    metric = cfg.early_stopping.metric
    column = METRIC_COLUMNS[metric]
    part = f"-fold-{fold[0] + 1}" if fold else ""
    ckpt_dir = workdir / checkpoint.CHECKPOINT_DIR / "tune" / study / f"trial-{trial.number}{part}"
    fingerprint = checkpoint.fingerprint({**cfg.model_dump(), "study": study, "trial": trial.number, "fold": fold},
                                         [workdir / split_csv("train"), workdir / split_csv("val")])

    def report(row: dict) -> None:
        trial.report(row[column], row["epoch"])
        if trial.should_prune():
            raise optuna.TrialPruned(f"epoch {row['epoch']}: {metric} {row[column]:.4f} lags the other trials")

    name = f"tune trial {trial.number}" + (f" fold {fold[0] + 1}/{fold[1]}" if fold else "")
    try:
        model = ShippedModel.fit(cfg, workdir, World(), fit_df, held_df, labels, fingerprint, ckpt_dir, name=name,
                                 on_epoch=report if per_epoch else None)
    finally:
        shutil.rmtree(ckpt_dir, ignore_errors=True)  # a trial is scored, never resumed
    # Scored as the train stage ships it (BatchNorm refreshed): the per-epoch values that pruning
    # compares rate a short full fine-tune on small, hard data far below the model it becomes.
    return float(model.score(held_df)[VALIDATE_KEYS[metric]])
