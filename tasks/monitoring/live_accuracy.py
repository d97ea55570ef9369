"""Accuracy on live traffic, from delayed labels: each reviewed served image joined to what the service
answered for it.

The service keeps two kinds of served image for review (tasks/labels/queue.py): `audit`, a random
share of all traffic, and `uncertain`, the images it was least sure of. Only the audit sample is an
unbiased sample of traffic, so only it gives "accuracy on live traffic"; the least-sure images'
accuracy is reported apart (it is lower by construction) and never mixed in.

A review's log row (tasks/labels/log.py) carries the served answer: model version, prediction and
the time the image was served. Reviews logged before the log had those columns are joined to the
queue's record of the image, while it is still there; a review whose record was pruned is counted
as unjoined and left out, never guessed.
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from scipy.stats import binomtest

from tasks.common.config import Params
from tasks.labels.log import TRAFFIC_KINDS, review_log
from tasks.labels.queue import audit_dir, kept, queue_dir

Z95 = 1.959964  # two-sided 95%
COLUMNS = ["model_version", "day", "kind", "images", "correct", "accuracy", "low", "high"]


def wilson(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion (95% by default); (0, 1) when n is 0."""
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def reviewed_answers(log: pd.DataFrame, records: pd.DataFrame | None = None) -> tuple[pd.DataFrame, int]:
    """The served images a person labelled with a class: model_version, kind, served_at, prediction, label,
    correct. `records` (the queue's, by key) fills answers older log rows lack. Also returns how many
    reviews could not be joined to an answer."""
    served = log[log["kind"].isin(TRAFFIC_KINDS) & (log["action"] == "added")].copy()
    for column in ("prediction", "served_at"):
        if column not in served:
            served[column] = ""
    if records is not None and len(served):
        missing, by_key = served["prediction"] == "", records.set_index("key")
        served.loc[missing, "prediction"] = served.loc[missing, "key"].map(by_key["prediction"]).fillna("")
        served.loc[missing, "served_at"] = served.loc[missing, "key"].map(by_key["time"]).fillna("")
    joined = served[(served["prediction"] != "") & (served["served_at"] != "")]
    answers = pd.DataFrame({
        "model_version": joined["model_version"], "kind": joined["kind"],
        "served_at": pd.to_datetime(joined["served_at"], utc=True, format="ISO8601"),
        "prediction": joined["prediction"], "label": joined["new_label"]})
    answers["correct"] = answers["prediction"] == answers["label"]
    return answers.reset_index(drop=True), int(len(served) - len(joined))


def accuracy_table(answers: pd.DataFrame) -> pd.DataFrame:
    """Per model version, day served and kind: images, correct, accuracy and its Wilson interval."""
    if answers.empty:
        return pd.DataFrame(columns=COLUMNS)
    days = answers.assign(day=answers["served_at"].dt.strftime("%Y-%m-%d"))
    table = days.groupby(["model_version", "day", "kind"])["correct"].agg(images="size", correct="sum").reset_index()
    return add_rates(table)[COLUMNS]


def add_rates(table: pd.DataFrame) -> pd.DataFrame:
    bounds = [wilson(int(c), int(n)) for c, n in zip(table["correct"], table["images"])]
    return table.assign(accuracy=(table["correct"] / table["images"]).round(4),
                        low=[round(lo, 4) for lo, _ in bounds], high=[round(hi, 4) for _, hi in bounds])


def model_accuracy(answers: pd.DataFrame, model: str, kind: str = "audit") -> dict:
    """One model's accuracy over every reviewed image of `kind` it served: images, correct, accuracy, low, high."""
    rows = answers[(answers["model_version"] == model) & (answers["kind"] == kind)]
    n, correct = len(rows), int(rows["correct"].sum())
    low, high = wilson(correct, n)
    return {"kind": kind, "images": n, "correct": correct, "accuracy": round(correct / n, 4) if n else None,
            "low": round(low, 4), "high": round(high, 4)}


def below_test_accuracy(audited: dict, test_accuracy: float, alpha: float, min_images: int) -> dict:
    """Is audited live accuracy significantly below the test accuracy? One-sided exact binomial test of
    the audited count against the test accuracy, once at least `min_images` were audited."""
    n = audited["images"]
    if n < min_images:
        return {"alarm": False, "p_value": None,
                "reason": f"{n} audited images of {min_images} needed to test live accuracy"}
    p = float(binomtest(audited["correct"], n, test_accuracy, alternative="less").pvalue)
    figures = (f"audited live accuracy {audited['accuracy']:.3f} [{audited['low']:.3f}, {audited['high']:.3f}] on "
               f"{n} images against test accuracy {test_accuracy:.3f}: one-sided binomial p = {p:.3g}")
    alarm = p < alpha
    return {"alarm": alarm, "p_value": round(p, 6),
            "reason": figures + (f" < alpha {alpha}" if alarm else f" (not below at alpha {alpha})")}


def load_answers(workdir: Path, params: Params) -> tuple[pd.DataFrame, int]:
    """`reviewed_answers` of the project's review log, older rows joined to the queues' records."""
    traffic = workdir / params.monitor.traffic_dir
    queues = [frame for frame in (kept(audit_dir(traffic)), kept(queue_dir(traffic))) if len(frame)]
    records = pd.concat(queues, ignore_index=True) if queues else kept(audit_dir(traffic))
    records["key"] = records["kind"] + ":" + records["image"].map(lambda path: Path(path).name)
    return reviewed_answers(review_log(workdir, params), records)


def unjoined_notice(unjoined: int) -> str | None:
    """One line for reviews that could not be joined to what the service answered."""
    if not unjoined:
        return None
    return (f"{unjoined} reviewed served images are left out of live accuracy: they were reviewed before the log kept "
            "the service's answers, and their served records have since been pruned from the queue (nothing to fix; "
            "reviews from now on carry the answer)")
