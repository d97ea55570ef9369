"""Reviews in, reviews out: what is sent to Label Studio, and how finished reviews change the data.

Three kinds of review task (tasks/labels/studio_client.py shows them with the model's prediction):
    suspect     a labelled image under data.root that the label_quality stage finds likely wrong
    uncertain   a served image the model was least sure of (tasks/labels/queue.py)
    audit       a served image drawn at random (tasks/labels/queue.py): measures live accuracy
A finished review changes data.root as a person would, and nothing is ever deleted:
    suspect, another class         the image moves to data.root/<class>/           relabelled
    suspect, its own class         stays                                            confirmed
    suspect, rejected              moves to <labels.review_dir>/rejected/<class>/   rejected
    uncertain or audit, a class    copied to data.root/<class>/                     added
    uncertain or audit, rejected   stays in the queue                               rejected
Every review is a row of <labels.review_dir>/log.csv (tasks/labels/log.py: file, old and new label,
reviewer, and for a served image what the service answered: model version, prediction, when it was
served); a review already in the log is not applied twice. Then data.root and the
review folder are `dvc add`-ed, so DVC's history can undo any step and the new-data trigger retrains.
"""
from __future__ import annotations

import contextlib
import shutil
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from tasks.common.config import Params, UserError
from tasks.common.paths import SUSPECTS_CSV
from tasks.labels.log import LOG_COLUMNS, LOG_NAME, TRAFFIC_KINDS, review_log
from tasks.labels.queue import audit_dir, kept, queue_dir
from tasks.labels.studio_client import EXTRA_CHOICES

REJECTED = "rejected"
OUT_OF_FOLD = "label_quality out-of-fold models"


def suspect_items(workdir: Path, params: Params) -> list[dict]:
    """A review item per suspect label of the last label_quality run whose image is still where it was."""
    path = workdir / SUSPECTS_CSV
    if not path.is_file():
        return []
    table = pd.read_csv(path, dtype={"given_label": str, "suggested_label": str, "path": str})
    items = []
    for row in table.itertuples():
        image = Path(params.data.root) / row.path
        if (workdir / image).is_file():
            items.append({"key": f"suspect:{row.path}:{row.given_label}", "image": image.as_posix(), "kind": "suspect",
                          "given_label": row.given_label, "prediction": row.suggested_label,
                          "score": float(row.suggested_probability), "model_version": OUT_OF_FOLD})
    return items


def uncertain_items(workdir: Path, params: Params, since: datetime | None = None, limit: int | None = None,
                    kind: str = "uncertain") -> list[dict]:
    """A review item per served image the service kept as `kind` (uncertain or audit; least sure first),
    optionally only those kept since a time."""
    traffic = workdir / params.monitor.traffic_dir
    queue = kept(audit_dir(traffic) if kind == "audit" else queue_dir(traffic))
    if since is not None:
        queue = queue[pd.to_datetime(queue["time"], utc=True) >= since]
    items = []
    for row in queue.head(limit).itertuples():
        try:
            image = Path(row.image).resolve().relative_to(workdir.resolve())
        except ValueError:
            raise UserError(f"monitor.traffic_dir must lie inside the project for review ({row.image} does not)") from None
        items.append({"key": f"{kind}:{Path(row.image).name}", "image": image.as_posix(), "kind": kind,
                      "given_label": None, "prediction": row.prediction,
                      "score": float(row.probabilities[row.prediction]), "model_version": row.model,
                      "probabilities": row.probabilities, "served_at": row.time})
    return items


def served_items(workdir: Path, params: Params) -> list[dict]:
    """Every kept served image, the audit sample first (it is what measures live accuracy)."""
    return uncertain_items(workdir, params, kind="audit") + uncertain_items(workdir, params)


def waiting_for_review(workdir: Path, params: Params) -> int:
    """Suspect labels and kept served images that no applied review has answered yet."""
    answered = set(review_log(workdir, params)["key"])
    return sum(item["key"] not in answered for item in suspect_items(workdir, params) + served_items(workdir, params))


def check_data_root_is_own(workdir: Path, params: Params) -> None:
    """Reviews rewrite data.root: refuse when it is a stage's output, which `dvc repro` would rewrite."""
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo  # imported here: the service and the flows' other tasks never need DVC
    from dvc.stage import PipelineStage

    root = str((workdir / params.data.root).resolve())
    try:
        with contextlib.chdir(workdir), Repo(str(workdir)) as repo:
            owner = next((out.stage.addressing for out in repo.index.outs
                          if out.fs_path == root and isinstance(out.stage, PipelineStage)), None)  # not `dvc add`
    except NotDvcRepoError:
        raise UserError(f"{workdir} is not a DVC project, so reviews could not be versioned: run dvc init there") from None
    if owner is not None:
        raise UserError(f"data.root {params.data.root} is the {owner} stage's output, which dvc repro rewrites: copy it "
                        f"to a folder of your own (cp -r {params.data.root} data/images; dvc add data/images), set "
                        "data.root: data/images in params.yaml, then apply reviews")


def free_path(path: Path) -> Path:
    """`path`, or `name-1.ext`, `name-2.ext`... when something is already there: nothing is overwritten."""
    candidate, n = path, 0
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return candidate


def apply_review(workdir: Path, params: Params, review: dict, classes: list[str]) -> dict:
    """Change the data as one finished review says; returns its log row (action and note say what happened)."""
    row = {"time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "key": review["key"],
           "kind": review["kind"], "file": review["image"], "old_label": review.get("given_label") or "",
           "new_label": review.get("choice") or "", "reviewer": review.get("reviewer") or "",
           "reviewed_at": review["reviewed_at"], "model_version": review.get("model_version") or "",
           "score": review.get("score"), "note": "",
           "prediction": (review.get("prediction") or "") if review["kind"] in TRAFFIC_KINDS else "",
           "served_at": review.get("served_at") or ""}
    source, choice = workdir / review["image"], review.get("choice")
    data_root = workdir / params.data.root
    if review.get("problem") or (choice not in classes and choice not in EXTRA_CHOICES):
        return {**row, "action": "skipped", "note": review.get("problem") or
                f"{choice!r} is not a class of data.root ({', '.join(classes)}); review it again with one of them"}
    if not source.is_file():
        return {**row, "action": "skipped", "note": f"{review['image']} vanished since the task was made "
                "(moved by an earlier review, or pruned from the queue); nothing changed"}
    if review["kind"] in TRAFFIC_KINDS:
        if choice in EXTRA_CHOICES:
            return {**row, "action": "rejected", "note": choice}
        target = free_path(data_root / choice / source.name)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
        return {**row, "action": "added", "file": target.relative_to(workdir).as_posix()}
    if choice == review.get("given_label"):
        return {**row, "action": "confirmed"}
    if choice in EXTRA_CHOICES:
        target = free_path(workdir / params.labels.review_dir / REJECTED / source.parent.name / source.name)
        action = "rejected"
    else:
        target, action = free_path(data_root / choice / source.name), "relabelled"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(source, target)
    return {**row, "action": action, "note": f"moved to {target.relative_to(workdir).as_posix()}"}


def apply_reviews(workdir: Path, params: Params, reviews: list[dict], classes: list[str]) -> pd.DataFrame:
    """Apply the reviews not yet in the log; append them to it; `dvc add` what changed. Returns the new rows."""
    log = review_log(workdir, params)
    done = set(zip(log["key"], log["reviewed_at"]))
    fresh = [r for r in reviews if (r["key"], r["reviewed_at"]) not in done]
    if not fresh:
        return pd.DataFrame(columns=LOG_COLUMNS)
    check_data_root_is_own(workdir, params)
    rows = pd.DataFrame([apply_review(workdir, params, r, classes) for r in fresh], columns=LOG_COLUMNS)
    path = workdir / params.labels.review_dir / LOG_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file() and list(log.columns) != LOG_COLUMNS:  # a log from before the served answers: same rows,
        log.reindex(columns=LOG_COLUMNS, fill_value="").to_csv(path, index=False)  # the new columns empty
    rows.to_csv(path, mode="a", header=not path.is_file(), index=False)  # the log only grows
    track(workdir, [params.data.root, params.labels.review_dir])
    return rows


def track(workdir: Path, paths: list[str]) -> None:
    """`dvc add` the folders, so the change is a new DVC version (and `git` of the .dvc files undoes it)."""
    from dvc.repo import Repo  # imported here: the service and the flows' other tasks never need DVC

    with contextlib.chdir(workdir), Repo(str(workdir)) as repo:
        repo.add(paths)
