"""One command's search: this data's study opened, then its trials run by tune.parallel processes.

`open_search` creates the study (params.yaml's recipe first, then the previous study's best) or
continues it: the trials whose process died are marked FAIL and queued once more, and their
checkpoints removed (tasks/tuning/study.py). `search_in_parallel` then runs trials here and in
tune.parallel - 1 spawned processes, each scored by tasks/tuning/objective.py, until the study has
tune.trials finished ones or tune.minutes passed.
"""
from __future__ import annotations

import multiprocessing
import os
import shutil
import warnings
from pathlib import Path
from typing import NamedTuple

import optuna
import pandas as pd
from optuna.study import MaxTrialsCallback
from optuna.trial import TrialState

from tasks.common.files import digest
from tasks.common.threads import use_cores
from tasks.data.splits import assign_folds, read_split
from tasks.training import checkpoint
from tasks.tuning import study as studies
from tasks.tuning.objective import score
from tasks.tuning.settings import TuningParams
from tasks.tuning.space import current_values, in_space, recipe, searched, suggest

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


class OpenedStudy(NamedTuple):
    name: str
    storage: object  # Optuna's: the journal file's or the database's
    where: str  # the storage as printed: the journal's path, or the database without its password
    marked_failed: list[int]  # trials whose process died, marked FAIL by this command


def open_search(params: TuningParams, workdir: Path) -> OpenedStudy:
    """This data's study, created or continued, ready for trials."""
    space = searched(params)
    name = studies.study_name(workdir, studies.question(params))
    if params.tune.folds > 1:  # too few images per class for the folds: say so before any trial starts
        assign_folds(pd.concat([read_split(workdir, "train"), read_split(workdir, "val")]), params.tune.folds,
                     params.train.seed, setting="tune.folds")
    storage, where, lock = studies.open_storage(workdir, params)
    direction = "minimize" if params.train.early_stopping.metric == "loss" else "maximize"
    with lock:  # one command at a time on this host creates the study and retries its failed trials
        study = studies.open_study(storage, name, direction, current_values(params, space),
                                   space_ok=lambda values: in_space(values, space))
        marked_failed = studies.recover(study)
    for number in marked_failed:  # what a killed trial left; its retry trains from the start
        leftovers = workdir / checkpoint.CHECKPOINT_DIR / "tune" / name
        for folder in [*leftovers.glob(f"trial-{number}"), *leftovers.glob(f"trial-{number}-fold-*")]:
            shutil.rmtree(folder, ignore_errors=True)
    return OpenedStudy(name, storage, where, marked_failed)


def search_in_parallel(params: TuningParams, workdir: Path) -> list[int]:
    """`search_process` here and in tune.parallel - 1 spawned processes; the exit codes of those that
    failed (their trials are marked at the next start)."""
    workers = [multiprocessing.get_context("spawn").Process(target=search_process, args=(params, workdir, i),
                                                            daemon=True)
               for i in range(1, params.tune.parallel)]
    for worker in workers:
        worker.start()
    search_process(params, workdir, 0)
    for worker in workers:
        worker.join()
    return [w.exitcode for w in workers if w.exitcode != 0]


def search_process(params: TuningParams, workdir: Path, worker: int) -> None:
    """One process's share of the study: trials until the budget is spent (counting other
    processes' running trials, so that together they stop at tune.trials)."""
    use_cores(share=params.tune.parallel)  # the processes side by side split this machine's cores
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the trials' own lines say what happens
    # params.yaml's recipe may lie outside tune.space: trial 0 measures it all the same.
    warnings.filterwarnings("ignore", message="Fixed parameter .* is out of range", category=UserWarning)
    space = searched(params)
    storage, _, _ = studies.open_storage(workdir, params)
    study = optuna.load_study(study_name=studies.study_name(workdir, studies.question(params)), storage=storage)
    if sum(t.state in FINISHED for t in study.get_trials(deepcopy=False)) >= params.tune.trials:
        return
    host = os.uname().nodename if os.environ.get(studies.STORAGE_ENV) else ""
    # Seeded by how far the study got, the process and the host: a continued study draws anew, and
    # processes started together draw different values; constant_liar keeps them apart in between.
    seed = int(digest([params.tune.seed, len(study.trials), worker, host])[:8], 16)
    study.sampler = optuna.samplers.TPESampler(seed=seed, constant_liar=True)
    study.pruner = studies.pruner(params.tune.pruner, first_step=2 if params.tune.folds == 1 else 1)
    train_df, val_df = read_split(workdir, "train"), read_split(workdir, "val")

    def objective(trial: optuna.Trial) -> float:
        studies.claim(trial)
        train = recipe(params.train, suggest(trial, space))
        return score(trial, train, workdir, study.study_name, params.tune.folds, train_df, val_df)

    study.optimize(objective, timeout=params.tune.minutes * 60 or None, gc_after_trial=True,
                   callbacks=[MaxTrialsCallback(params.tune.trials, states=(*FINISHED, TrialState.RUNNING))])
