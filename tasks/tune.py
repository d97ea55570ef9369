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
by the data it is scored on and by what it asks (tasks/tuning/study.py): the same command continues
it after Ctrl-C or kill -9, on this machine or on several at once, up to `tune.trials` finished
trials. `tune.parallel` processes search side by side on this machine (tasks/tuning/search.py). The
best trial, against params.yaml's recipe, is printed and written to reports/tune/ (study.json and
the page index.html; tasks/tuning/report.py), then run or written (tasks/tuning/apply.py).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import optuna

from tasks.common.config import UserError, load_params
from tasks.tuning.apply import adopt
from tasks.tuning.report import dashboard, write_report
from tasks.tuning.search import open_search, search_in_parallel
from tasks.tuning.settings import TuningParams


def run(params: TuningParams, workdir: Path = Path(".")) -> dict:
    """Continue this data's study until tune.trials trials finished or tune.minutes passed."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the trials' own lines say what happens
    opened = open_search(params, workdir)
    started = time.monotonic()
    lost = search_in_parallel(params, workdir)
    summary = write_report(workdir, optuna.load_study(study_name=opened.name, storage=opened.storage), opened.where,
                           params.train.early_stopping.metric, round(time.monotonic() - started, 1))
    return {**summary, "marked_failed_now": opened.marked_failed, **({"processes_lost": lost} if lost else {})}


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
        params = load_params(model=TuningParams)
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
