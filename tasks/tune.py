"""Tune: an Optuna search for a better train recipe, on the train stage's own engine.

    python -m tasks.tune             search, then run the best recipe as a DVC experiment (make tune)
    python -m tasks.tune --apply     search, then write the best recipe into params.yaml (comments kept)
    python -m tasks.tune --no-exp    search only
    python -m tasks.tune --dashboard optuna-dashboard on the study's storage, on loopback (make tune-dashboard)

Each trial trains the recipe of params.yaml with the values Optuna's TPE sampler picks from
`tune.space` (tasks/tuning/space.py), scored on val.csv or by K folds of train and val
(tasks/tuning/objective.py); the test split is never read. A trial that lags the others at the same
epoch (or fold) is pruned (`tune.pruner`). The study's first trial is params.yaml's recipe, so the
best is always measured against it.

The study lives in a journal file under ops.home or in the database of IMGCLF_TUNE_STORAGE, named
by the data it is scored on and by what it asks (tasks/tuning/study.py): the same command continues it after Ctrl-C or
kill -9, on this machine or on several at once, up to `tune.trials` finished trials. `tune.parallel`
processes search side by side on this machine. The best trial, against params.yaml's recipe, is
printed and written to reports/tune/ (study.json and the page index.html).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import optuna
import pandas as pd
import torch
from optuna.study import MaxTrialsCallback
from optuna.trial import TrialState

from tasks.common.config import PARAMS_FILE, Params, UserError, load_params
from tasks.common.files import digest
from tasks.data.splits import assign_folds, read_split
from tasks.training import checkpoint
from tasks.tuning import study as studies
from tasks.tuning.apply import apply_values, set_arguments
from tasks.tuning.objective import score
from tasks.tuning.report import write_page
from tasks.tuning.space import parse_space, recipe, suggest, value_at

REPORT_DIR = Path("reports/tune")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
EXPERIMENT_TARGET = "gate"


def run(params: Params, workdir: Path = Path(".")) -> dict:
    """Continue this data's study until tune.trials trials finished or tune.minutes passed."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the trials' own lines say what happens
    space = searched(params)
    name = studies.study_name(workdir, question(params))
    if params.tune.folds > 1:  # too few images per class for the folds: say so before any trial starts
        assign_folds(pd.concat([read_split(workdir, "train"), read_split(workdir, "val")]), params.tune.folds,
                     params.train.seed, setting="tune.folds")
    storage, where, lock = studies.open_storage(workdir, params)
    direction = "minimize" if params.train.early_stopping.metric == "loss" else "maximize"
    with lock:  # one command at a time on this host creates the study and retries its failed trials
        study = studies.open_study(storage, name, direction, current_values(params, space),
                                   space_ok=lambda values: _in_space(values, space, params))
        marked_failed = studies.recover(study)
    for number in marked_failed:  # what a killed trial left; its retry trains from the start
        leftovers = workdir / checkpoint.CHECKPOINT_DIR / "tune" / name
        for folder in [*leftovers.glob(f"trial-{number}"), *leftovers.glob(f"trial-{number}-fold-*")]:
            shutil.rmtree(folder, ignore_errors=True)
    started = time.monotonic()
    workers = [multiprocessing.get_context("spawn").Process(target=search, args=(params, workdir, i), daemon=True)
               for i in range(1, params.tune.parallel)]
    for worker in workers:
        worker.start()
    search(params, workdir, 0)
    for worker in workers:
        worker.join()
    summary = write_report(workdir, optuna.load_study(study_name=name, storage=storage), where,
                           params.train.early_stopping.metric, round(time.monotonic() - started, 1))
    lost = [w.exitcode for w in workers if w.exitcode != 0]  # their trials are marked at the next start
    return {**summary, "marked_failed_now": marked_failed, **({"processes_lost": lost} if lost else {})}


def search(params: Params, workdir: Path, worker: int) -> None:
    """One process's share of the study: trials until the budget is spent (counting other
    processes' running trials, so that together they stop at tune.trials)."""
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // params.tune.parallel))
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the trials' own lines say what happens
    # params.yaml's recipe may lie outside tune.space: trial 0 measures it all the same.
    warnings.filterwarnings("ignore", message="Fixed parameter .* is out of range", category=UserWarning)
    space = searched(params)
    storage, _, _ = studies.open_storage(workdir, params)
    study = optuna.load_study(study_name=studies.study_name(workdir, question(params)), storage=storage)
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


def searched(params: Params) -> dict:
    """tune.space, checked, with params.yaml's own value added to each list of choices: trial 0
    measures the written recipe, so it must be a value the study can hold."""
    space = parse_space(params.tune.space, params.train)
    written = current_values(params, space)
    return {key: [*dim, written[key]] if isinstance(dim, list) and written[key] not in dim else dim
            for key, dim in space.items()}


def question(params: Params) -> dict:
    """What a study asks: its trials are comparable only while this stays the same."""
    fixed = params.train.model_dump(mode="json")
    for key in params.tune.space:  # what the study varies is not part of the question
        *path, leaf = key.removeprefix("train.").split(".")
        node = fixed
        for part in path:
            node = node.get(part, {})
        node.pop(leaf, None)
    return {"space": params.tune.space, "fixed": fixed, "folds": params.tune.folds,
            "metric": params.train.early_stopping.metric}


def current_values(params: Params, space: dict) -> dict:
    """The values params.yaml's recipe has for the keys of the space."""
    train = params.train.model_dump()
    return {key: value_at(train, key) for key in space}


def _in_space(values: dict, space: dict, params: Params) -> bool:
    """Whether a previous study's trial can start this one: the same keys, every value allowed."""
    if set(values) != set(space):
        return False
    for key, value in values.items():
        allowed = space[key]
        if isinstance(allowed, list) and value not in allowed:
            return False
        if not isinstance(allowed, list) and not allowed.low <= value <= allowed.high:
            return False
    return True


def write_report(workdir: Path, study: optuna.Study, where: str, metric: str, seconds: float) -> dict:
    """reports/tune/study.json (every trial) and index.html; returns the summary printed."""
    trials = [{"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
               "recipe": t.user_attrs.get(studies.RECIPE, "searched"),
               "fold_values": t.user_attrs.get("fold_values"), "retry_of": t.system_attrs.get("failed_trial"),
               "seconds": round((t.datetime_complete - t.datetime_start).total_seconds(), 1)
               if t.datetime_complete and t.datetime_start else None} for t in study.trials]
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    best = study.best_trial if done else None
    written = next((t for t in trials if t["recipe"] == "params.yaml" and t["state"] == "COMPLETE"), None)
    summary = {
        "study": study.study_name, "storage": where, "metric": f"validation {metric}",
        "trials": {state.name.lower(): sum(t.state == state for t in study.trials) for state in TrialState},
        "best": {"number": best.number, "value": best.value, "params": best.params,
                 "recipe": best.user_attrs.get(studies.RECIPE, "searched"),
                 "fold_std": best.user_attrs.get("fold_std")} if best else None,
        "params_yaml_recipe": {"number": written["number"], "value": written["value"]} if written else None,
        "seconds_this_run": seconds,
    }
    out = workdir / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    (out / "study.json").write_text(json.dumps({**summary, "all_trials": trials}, indent=2, default=str))
    write_page(study, out, f"validation {metric}")
    return summary


def adopt(summary: dict, workdir: Path, how: str) -> str:
    """Put the best recipe to use: a DVC experiment beside the baseline (dvc exp show lists it;
    dvc exp apply adopts it), or written into params.yaml. Never promotes: the pipeline and its gate do."""
    best = summary["best"]
    if best is None:
        return "no completed trial yet: nothing to adopt"
    if best["recipe"] == "params.yaml":
        return "the best trial is params.yaml's own recipe: nothing to change"
    if how == "apply":
        changes = apply_values(workdir / PARAMS_FILE, best["params"])
        return f"{PARAMS_FILE}: " + ("; ".join(changes) or "already the best recipe")
    name = f"{summary['study']}-trial-{best['number']}"
    # --temp: in a copy, so the workspace (and the next retrain) keeps params.yaml's recipe until adopted;
    # up to the gate: its metrics and decision are what `dvc exp show` compares (packaging adds nothing).
    command = [sys.executable, "-m", "dvc", "exp", "run", "--temp", "--name", name,
               *set_arguments(best["params"]), EXPERIMENT_TARGET]
    shown = " ".join(["dvc", *command[3:]])
    print(f"tune: {shown}", flush=True)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    if subprocess.run(command, cwd=workdir, env=env).returncode != 0:
        raise UserError(f"dvc exp run of trial {best['number']} failed (its output is above); rerun it: {shown}")
    return f"DVC experiment {name}: compare with `dvc exp show`, adopt with `dvc exp apply {name}`"


def dashboard(params: Params, workdir: Path, port: int) -> None:
    """optuna-dashboard on 127.0.0.1:port over the study's storage (the journal file or the database)."""
    url = os.environ.get(studies.STORAGE_ENV)
    storage = url or str(studies.journal_path(workdir, params))
    if not url and not Path(storage).is_file():
        raise UserError(f"no study yet ({storage} not found); run make tune first")
    hint = [] if url else ["--storage-class", "JournalFileStorage"]
    print(f"tune: optuna-dashboard on http://127.0.0.1:{port} (Ctrl-C stops it)", flush=True)
    os.execv(Path(sys.executable).with_name("optuna-dashboard"),
             ["optuna-dashboard", "--host", "127.0.0.1", "--port", str(port), *hint, storage])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tasks.tune", description=__doc__.split("\n")[0])
    then = parser.add_mutually_exclusive_group()
    then.add_argument("--apply", action="store_true", help="write the best recipe into params.yaml")
    then.add_argument("--no-exp", action="store_true", help="search only; do not run the best as a DVC experiment")
    then.add_argument("--dashboard", action="store_true", help="open the study in optuna-dashboard instead")
    parser.add_argument("--port", type=int, default=8084, help="the dashboard's loopback port (default 8084)")
    args = parser.parse_args(argv)
    workdir = Path(".")
    try:
        params = load_params()
        if args.dashboard:
            return dashboard(params, workdir, args.port)
        summary = run(params, workdir)
        print("tune: " + json.dumps(summary, default=str), flush=True)
        if not args.no_exp:
            print("tune: " + adopt(summary, workdir, "apply" if args.apply else "experiment"))
    except UserError as err:  # as every stage: one line, exit code 2
        print(f"tune: error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("tune: stopped; finished trials are kept in the study, and the same command continues it",
              file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
