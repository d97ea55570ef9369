"""Out-of-fold predicted probabilities: every labelled image judged by a model that never saw it.

Train and val are split into K stratified folds (duplicate groups kept whole, so a copy never
judges its original; tasks/training/folds.py); each fold's images are predicted by a model
fine-tuned on the other folds with the train stage's own engine and shipped as it ships, from its
last epoch (tasks/training/shipped.py). The test split is predicted by the mean of the K fold
models, none of which saw it. Each fold checkpoints like the train stage, so a killed run resumes
at the fold and epoch it reached.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from tasks.common.config import LabelsParams, TrainParams
from tasks.common.files import digest
from tasks.data.splits import class_indices
from tasks.training import checkpoint
from tasks.training.distributed import World
from tasks.training.folds import kfold
from tasks.training.shipped import ShippedModel

CHECKPOINTS = checkpoint.CHECKPOINT_DIR / "label_quality"


def fold_recipe(train: TrainParams, labels: LabelsParams) -> TrainParams:
    """The train recipe with the fold strategy and epochs; every epoch runs (no early stopping, which
    would pick weights by the held-out fold they are meant to judge)."""
    stopping = train.early_stopping.model_copy(update={"patience": 0})
    return train.model_copy(update={"strategy": labels.strategy, "epochs": labels.epochs,
                                    "early_stopping": stopping, "processes": 1, "nodes": 1})


def out_of_fold(train: TrainParams, params: LabelsParams, workdir: Path, labelled: pd.DataFrame,
                test: pd.DataFrame, labels: list[str], data_files: list[Path]) -> dict:
    """Out-of-fold probabilities of `labelled` and the fold models' mean on `test`, with per-fold figures."""
    cfg = fold_recipe(train, params)
    labelled = labelled.reset_index(drop=True)  # a held-out row's index is then its position
    fold_of = np.zeros(len(labelled), dtype=np.int64)
    oof = np.zeros((len(labelled), len(labels)), dtype=np.float32)
    test_probs = np.zeros((len(test), len(labels)), dtype=np.float32)
    figures = []
    for fold, fit_rows, held_rows in kfold(labelled, params.folds, cfg.seed, setting="labels.folds"):
        run_fingerprint = checkpoint.fingerprint(
            {**cfg.model_dump(), "fold": fold, "folds": params.folds, "held_out": digest(list(held_rows["file"]))},
            data_files)
        # The last epoch, never the best: the best is picked by the held-out fold this model then judges.
        model = ShippedModel.fit(cfg, workdir, World(), fit_rows, held_rows, labels, run_fingerprint,
                                 workdir / CHECKPOINTS / f"fold-{fold + 1}", select="last",
                                 name=f"label_quality fold {fold + 1}/{params.folds}")
        held = held_rows.index.to_numpy()
        fold_of[held] = fold
        oof[held] = model.probabilities(held_rows)
        test_probs += model.probabilities(test) / params.folds
        held_acc = float((oof[held].argmax(1) == class_indices(held_rows, labels)).mean())
        figures.append({"fold": fold + 1, "train_images": len(fit_rows), "held_out": len(held_rows),
                        "held_out_acc": round(held_acc, 4),
                        "seconds": round(sum(row["seconds"] for row in model.run.state.history), 1)})
    return {"oof": oof, "test": test_probs, "fold": fold_of, "folds": figures}
