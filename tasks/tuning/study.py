"""Where a study lives, what it is called, and how it outlives a killed process.

A study is kept in Optuna's storage, never in memory: a journal file under ops.home by default, or
the database in IMGCLF_TUNE_STORAGE that several machines share. It is named by a hash of the two
files its trials are scored on (train.csv and val.csv) and one of what it asks (tune.space, the train
settings it leaves fixed, tune.folds), so new data or a new question starts a new study, which begins
with params.yaml's recipe and the best recipes of the study before it.

A trial whose process died (kill -9, a lost machine) stays RUNNING in the storage. Each trial
records its host and process, so the next command on that host marks it FAIL at once; on a
database Optuna's heartbeat does the same for every host. A failed or killed trial is run again
once with the same values, and never counts as a result.
"""
from __future__ import annotations

import os
import socket
import time
import warnings
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path

import optuna
import psutil
import sqlalchemy.exc
from filelock import FileLock
from optuna.exceptions import DuplicatedStudyError
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from tasks.common.config import UserError
from tasks.common.files import digest, sha256
from tasks.common.paths import split_csv
from tasks.tuning.settings import TuningParams

STORAGE_ENV = "IMGCLF_TUNE_STORAGE"
HEARTBEAT_SECONDS = 30   # a database trial's heartbeat; Optuna fails it after GRACE_SECONDS without one
GRACE_SECONDS = 120
WARM_START = 3           # best trials of the previous study that a new study starts with
RETRIES = 1              # a failed or killed trial is run again this many times
RECIPE = "recipe"        # the user attr saying where a trial's values came from
CLAIM = ("host", "pid", "pid_started")  # the user attrs naming the process that runs a trial


def study_name(workdir: Path, question: dict) -> str:
    """tune-<hash of train.csv and val.csv>-<hash of the question>: the data a study's trials are
    scored on, and what it asks (the space, the settings it keeps fixed, the folds); a change to
    either is another study, warm-started from this one."""
    files = [workdir / split_csv("train"), workdir / split_csv("val")]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise UserError(f"{', '.join(missing)} not found; run dvc repro split first")
    return f"tune-{digest([sha256(f) for f in files])[:12]}-{digest([question])[:6]}"


def question(params: TuningParams) -> dict:
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


def journal_path(workdir: Path, params: TuningParams) -> Path:
    """The default storage: a journal file under ops.home."""
    return workdir / params.ops.home / "tune" / "journal.log"


def open_storage(workdir: Path, params: TuningParams):
    """(storage, where it is for people, a lock that serialises this host's bookkeeping)."""
    url = os.environ.get(STORAGE_ENV)
    if not url:
        path = journal_path(workdir, params)
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path))), str(path), FileLock(f"{path}.bookkeeping.lock")
    try:
        storage = _database(url)
    except Exception as err:  # SQLAlchemy's and the driver's errors: a wrong URL, an unreachable server
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise UserError(f"{STORAGE_ENV}: cannot open the study database ({reason}); "
                        "check the URL (postgresql://user:password@host:port/db) and that the server is up") from None
    lock = FileLock(str(workdir / params.ops.home / "tune.bookkeeping.lock"))
    (workdir / params.ops.home).mkdir(parents=True, exist_ok=True)
    return storage, url.split("@")[-1], lock  # no password in what is printed


def _database(url: str) -> optuna.storages.RDBStorage:
    """Optuna's tables in the database, with trial heartbeats; commands started together on an empty
    database race to create the tables, and the losers try again."""
    for attempt in range(3):
        try:
            with _experimental():
                return optuna.storages.RDBStorage(
                    url, engine_kwargs={"pool_pre_ping": True}, heartbeat_interval=HEARTBEAT_SECONDS,
                    grace_period=GRACE_SECONDS, heartbeat_stale_trial_callback=retry)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):  # "already exists"
            if attempt == 2:
                raise
            time.sleep(1 + attempt)


def open_study(storage, name: str, direction: str, baseline: dict, space_ok) -> optuna.Study:
    """The study `name`; a new one starts with params.yaml's recipe as trial 0, then the best
    trials of the storage's latest other study that `space_ok` accepts (warm start).

    Creating is atomic in both storages, so of several commands started at once exactly one
    enqueues the first trials."""
    try:
        study = optuna.create_study(study_name=name, storage=storage, direction=direction)
    except DuplicatedStudyError:
        return optuna.load_study(study_name=name, storage=storage)
    study.enqueue_trial(baseline, user_attrs={RECIPE: "params.yaml"})
    for source, trial in previous_best(storage, name, direction):
        if trial.params != baseline and space_ok(trial.params):
            study.enqueue_trial(trial.params, user_attrs={RECIPE: f"warm start: {source} trial {trial.number}"},
                                skip_if_exists=True)
    return study


def previous_best(storage, name: str, direction: str) -> list[tuple[str, FrozenTrial]]:
    """The best WARM_START completed trials of the most recent other study with the same direction."""
    others = [s for s in storage.get_all_studies()
              if s.study_name != name and s.study_name.startswith("tune-") and s.direction.name.lower() == direction]
    if not others:
        return []
    latest = max(others, key=lambda s: s._study_id)
    done = [t for t in storage.get_all_trials(latest._study_id, states=(TrialState.COMPLETE,))]
    done.sort(key=lambda t: t.value, reverse=direction == "maximize")
    return [(latest.study_name, t) for t in done[:WARM_START]]


def claim(trial: optuna.Trial) -> None:
    """Record which process runs the trial, so a later command can tell it died."""
    me = psutil.Process()
    trial.set_user_attr("host", socket.gethostname())
    trial.set_user_attr("pid", me.pid)
    trial.set_user_attr("pid_started", me.create_time())


def recover(study: optuna.Study) -> list[int]:
    """Mark FAIL the RUNNING trials of this host whose process is gone, then enqueue once more
    every failed trial not retried yet. Returns the trials marked FAIL now."""
    trials = study.get_trials(deepcopy=False)
    dead = [t for t in trials if t.state == TrialState.RUNNING and _process_gone(t)]
    for trial in dead:
        study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        if trial.number not in retried:
            retry(study, trial)
    return [t.number for t in dead]


def retry(study: optuna.Study, trial: FrozenTrial) -> None:
    """Enqueue a failed trial's values once more, as Optuna's RetryHeartbeatStaleTrialCallback does
    (the same failed_trial and retry_history system attrs), but without the dead process's claim:
    a copied claim would make the retry look dead to a command starting while it is taken."""
    history = [*trial.system_attrs.get("retry_history", []), trial.number]
    if len(history) > RETRIES:
        return
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.WAITING, params=trial.params, distributions=trial.distributions,
        user_attrs={k: v for k, v in trial.user_attrs.items() if k not in CLAIM},
        system_attrs={**trial.system_attrs, "failed_trial": history[0], "retry_history": history}))


@contextmanager
def _experimental():
    """Heartbeats are 'experimental' in Optuna 5, and exactly what a shared study needs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def _process_gone(trial: FrozenTrial) -> bool:
    attrs = trial.user_attrs
    if "pid_started" not in attrs:  # killed (or still) between taking the trial and claiming it: judge by age
        return datetime.now() - trial.datetime_start > timedelta(seconds=GRACE_SECONDS)
    if attrs.get("host") != socket.gethostname():
        return False  # another machine's: its own next command, or the database's heartbeat, judges it
    try:
        return psutil.Process(attrs["pid"]).create_time() != attrs["pid_started"]  # the pid was reused
    except psutil.NoSuchProcess:
        return True


def pruner(kind: str, first_step: int) -> optuna.pruners.BasePruner:
    """A trial may be pruned from `first_step` on (an epoch, or a fold counted from 0), and by the
    median only once three trials finished: the first epoch of a fine-tune from a low learning rate
    lags a linear probe's, and pruning on it kept only probes (measured on digits)."""
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=first_step)
    return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=first_step)
