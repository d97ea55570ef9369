"""Tune: an Optuna search for a better train recipe, on the train stage's own engine.

    python -m tasks.tune        (make tune)

Each trial trains the recipe of params.yaml with the values Optuna's TPE sampler picks from
`tune.space` (tasks/tuning/space.py): the same inputs, image cache and loop as the train stage
(tasks/training/engine.py), on data/split/train.csv, validating on val.csv after every epoch. The
test split is never read. A trial reports each epoch's validation metric (train.early_stopping.metric)
and is pruned when it lags the earlier trials at the same epoch (`tune.pruner`). The study's first
trial is the recipe as params.yaml has it, so the best trial is always measured against it.

The study is kept in a journal file, <ops.home>/tune/journal.log (or the database named by
IMGCLF_TUNE_STORAGE), and named by a hash of the split it tunes on: running the command again
continues the study up to `tune.trials` finished trials; new data starts a new study. Prints the
best trial against the recipe, and writes reports/tune/study.json.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.study import MaxTrialsCallback
from optuna.trial import TrialState

from tasks.common.cli import run_stage
from tasks.common.config import Params, UserError
from tasks.common.files import digest, sha256
from tasks.common.paths import split_csv
from tasks.data.splits import read_split
from tasks.model.backbones import resolve_inputs
from tasks.training import checkpoint
from tasks.training.distributed import World
from tasks.training.engine import METRIC_COLUMNS, fit_frames
from tasks.tuning.space import parse_space, recipe, suggest

STORAGE_ENV = "IMGCLF_TUNE_STORAGE"
REPORT_JSON = Path("reports/tune/study.json")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def study_name(workdir: Path) -> str:
    """tune-<hash of train.csv and val.csv>: the data a study's trials are scored on."""
    files = [workdir / split_csv("train"), workdir / split_csv("val")]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise UserError(f"{', '.join(missing)} not found; run dvc repro split first")
    return f"tune-{digest([sha256(f) for f in files])[:12]}"


def open_storage(workdir: Path, params: Params):
    """The journal file under ops.home, or the database in IMGCLF_TUNE_STORAGE (several machines)."""
    url = os.environ.get(STORAGE_ENV)
    if not url:
        path = workdir / params.ops.home / "tune" / "journal.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path))), str(path)
    try:
        return optuna.storages.RDBStorage(url), url.split("@")[-1]  # no password in what is printed
    except Exception as err:  # SQLAlchemy's errors: a wrong URL, an unreachable server
        raise UserError(f"{STORAGE_ENV}: cannot open the study database ({type(err).__name__}: "
                        f"{str(err).splitlines()[0][:200]}); check the URL and that the server is up") from None


def pruner(kind: str) -> optuna.pruners.BasePruner:
    """Judged from the third epoch on, after three trials: the first epochs of a fine-tune from a
    low learning rate lag a linear probe's, and pruning on them kept only probes (measured on digits)."""
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=3)
    return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2)


def run(params: Params, workdir: Path = Path(".")) -> dict:
    space = parse_space(params.tune.space, params.train)
    metric = params.train.early_stopping.metric
    column = METRIC_COLUMNS[metric]
    train_df, val_df = read_split(workdir, "train"), read_split(workdir, "val")
    labels = sorted(train_df["label"].unique())
    storage, where = open_storage(workdir, params)
    name = study_name(workdir)
    study = optuna.create_study(study_name=name, storage=storage, load_if_exists=True,
                                direction="minimize" if metric == "loss" else "maximize", pruner=pruner(params.tune.pruner))
    # Seeded by how far the study got: a run that continues it draws new values, not the first run's again.
    study.sampler = optuna.samplers.TPESampler(seed=params.tune.seed + len(study.trials))
    if not study.trials:  # trial 0: the recipe as params.yaml has it
        study.enqueue_trial(_current(params, space), user_attrs={"recipe": "params.yaml"})

    def objective(trial: optuna.Trial) -> float:
        values = suggest(trial, space)
        cfg = resolve_inputs(recipe(params.train, values)).model_copy(update={"processes": 1, "nodes": 1})
        ckpt_dir = workdir / checkpoint.CHECKPOINT_DIR / "tune" / name / f"trial-{trial.number}"
        fingerprint = checkpoint.fingerprint({**cfg.model_dump(), "study": name, "trial": trial.number},
                                             [workdir / split_csv("train"), workdir / split_csv("val")])

        def report(row: dict) -> None:
            trial.report(row[column], row["epoch"])
            if trial.should_prune():
                raise optuna.TrialPruned(f"epoch {row['epoch']}: {metric} {row[column]:.4f} lags the other trials")

        try:
            run = fit_frames(cfg, workdir, World(), train_df, val_df, labels, fingerprint, ckpt_dir,
                             name=f"tune trial {trial.number}", on_epoch=report)
        finally:
            shutil.rmtree(ckpt_dir, ignore_errors=True)
        return run.state.stopper.best

    finished = sum(t.state in FINISHED for t in study.trials)
    started = time.monotonic()
    if finished < params.tune.trials:
        study.optimize(objective, timeout=params.tune.minutes * 60 or None, n_jobs=params.tune.parallel,
                       callbacks=[MaxTrialsCallback(params.tune.trials, states=FINISHED)], gc_after_trial=True)
    return write_report(workdir, study, where, metric, round(time.monotonic() - started, 1))


def _current(params: Params, space: dict) -> dict:
    """The values params.yaml's recipe has for the keys of the space."""
    values = {}
    for key in space:
        node = params.train.model_dump()
        for part in key.removeprefix("train.").split("."):
            node = node[part]
        values[key] = node
    return values


def write_report(workdir: Path, study: optuna.Study, where: str, metric: str, seconds: float) -> dict:
    trials = [{"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
               "recipe": t.user_attrs.get("recipe", "searched"),
               "seconds": round((t.datetime_complete - t.datetime_start).total_seconds(), 1)
               if t.datetime_complete and t.datetime_start else None} for t in study.trials]
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    written = next((t for t in trials if t["recipe"] == "params.yaml" and t["state"] == "COMPLETE"), None)
    summary = {
        "study": study.study_name, "storage": where, "metric": f"validation {metric}",
        "trials": {state.name.lower(): sum(t.state == state for t in study.trials) for state in TrialState},
        "best": {"number": study.best_trial.number, "value": study.best_value, "params": study.best_params}
        if done else None,
        "params_yaml_recipe": {"number": written["number"], "value": written["value"]} if written else None,
        "seconds_this_run": seconds,
    }
    (workdir / REPORT_JSON).parent.mkdir(parents=True, exist_ok=True)
    (workdir / REPORT_JSON).write_text(json.dumps({**summary, "all_trials": trials}, indent=2, default=str))
    return summary


if __name__ == "__main__":
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the trials' own lines say what happens
    run_stage("tune", run)
