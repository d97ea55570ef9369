"""Out-of-fold predicted probabilities: every labelled image judged by a model that never saw it.

Train and val are split into K stratified folds (duplicate groups kept whole, so a copy never
judges its original); each fold's images are predicted by a model fine-tuned on the other folds with
the train stage's own engine (tasks/training/engine.py). The test split is predicted by the mean of
the K fold models, none of which saw it. Each fold checkpoints like the train stage, so a killed
run resumes at the fold and epoch it reached.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from tasks.common.config import LabelsParams, TrainParams
from tasks.common.files import digest
from tasks.data.splits import assign_folds
from tasks.model.device import autocast
from tasks.training import checkpoint
from tasks.training.distributed import World
from tasks.training.engine import FittedRun, fit_frames, refresh_norm_stats, targets
from tasks.training.inputs import cached_images

CHECKPOINTS = checkpoint.CHECKPOINT_DIR / "label_quality"


def fold_recipe(train: TrainParams, labels: LabelsParams) -> TrainParams:
    """The train recipe with the fold strategy and epochs; every epoch runs (no early stopping, which
    would pick weights by the held-out fold they are meant to judge)."""
    stopping = train.early_stopping.model_copy(update={"patience": 0})
    return train.model_copy(update={"strategy": labels.strategy, "epochs": labels.epochs,
                                    "early_stopping": stopping, "processes": 1, "nodes": 1})


@torch.inference_mode()
def probabilities(run: FittedRun, frame: pd.DataFrame, labels: list[str]) -> np.ndarray:
    """Softmax outputs (N, C) of the run's network on the frame's images, as evaluation sees them."""
    ctx = run.ctx.alone()
    model = run.state.model.eval()
    unlabelled = torch.zeros(len(frame), dtype=torch.long)  # the test split may hold classes in any order
    parts = []
    for inputs, _ in cached_images(ctx, frame, unlabelled, train=False, augment=False).batches():
        with autocast(ctx.device):
            parts.append(torch.softmax(model(inputs).float(), dim=1).cpu())
    return torch.cat(parts).numpy()


def out_of_fold(train: TrainParams, params: LabelsParams, workdir: Path, labelled: pd.DataFrame,
                test: pd.DataFrame, labels: list[str], data_files: list[Path]) -> dict:
    """Out-of-fold probabilities of `labelled` and the fold models' mean on `test`, with per-fold figures."""
    cfg = fold_recipe(train, params)
    fold_of = assign_folds(labelled, params.folds, cfg.seed, setting="labels.folds")
    oof = np.zeros((len(labelled), len(labels)), dtype=np.float32)
    test_probs = np.zeros((len(test), len(labels)), dtype=np.float32)
    figures = []
    for fold in range(params.folds):
        fit_rows, held_rows = labelled[fold_of != fold], labelled[fold_of == fold]
        run_fingerprint = checkpoint.fingerprint(
            {**cfg.model_dump(), "fold": fold, "folds": params.folds, "held_out": digest(list(held_rows["file"]))},
            data_files)
        run = fit_frames(cfg, workdir, World(), fit_rows, held_rows, labels, run_fingerprint,
                         workdir / CHECKPOINTS / f"fold-{fold + 1}", name=f"label_quality fold {fold + 1}/{params.folds}")
        if run.state.ema is not None:  # the averaged weights are the ones validation judged
            run.state.trained.load_state_dict(run.state.judged.state_dict())
        refresh_norm_stats(run, fit_rows, labels)
        oof[fold_of == fold] = probabilities(run, held_rows, labels)
        test_probs += probabilities(run, test, labels) / params.folds
        held_acc = float((oof[fold_of == fold].argmax(1) == targets(held_rows, labels).numpy()).mean())
        figures.append({"fold": fold + 1, "train_images": len(fit_rows), "held_out": len(held_rows),
                        "held_out_acc": round(held_acc, 4),
                        "seconds": round(sum(row["seconds"] for row in run.state.history), 1)})
    return {"oof": oof, "test": test_probs, "fold": fold_of, "folds": figures}
