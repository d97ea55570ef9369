"""Data drift with Evidently: one report over the monitored columns, and the verdicts it reached."""
from __future__ import annotations

import warnings

import pandas as pd
from evidently import DataDefinition, Dataset, Report, Run
from evidently.presets import DataDriftPreset

from tasks.monitoring.features import FEATURE_COLUMNS

# Confidence is compared too: a falling confidence is often the first sign of unfamiliar inputs.
NUMERICAL_COLUMNS = FEATURE_COLUMNS + ["confidence"]
CATEGORICAL_COLUMNS = ["prediction"]
DRIFT_COLUMNS = NUMERICAL_COLUMNS + CATEGORICAL_COLUMNS


def drift_snapshot(reference: pd.DataFrame, current: pd.DataFrame, drift_share: float) -> Run:
    """Run Evidently's DataDriftPreset on the drift columns, with its per-column and dataset tests."""
    definition = DataDefinition(numerical_columns=NUMERICAL_COLUMNS, categorical_columns=CATEGORICAL_COLUMNS)
    report = Report([DataDriftPreset(columns=DRIFT_COLUMNS, drift_share=drift_share)], include_tests=True)
    with warnings.catch_warnings():
        # Constant columns (every image the same width) make numpy warn while Evidently plots them.
        warnings.simplefilter("ignore", RuntimeWarning)
        return report.run(
            Dataset.from_pandas(current[DRIFT_COLUMNS], data_definition=definition),
            Dataset.from_pandas(reference[DRIFT_COLUMNS], data_definition=definition),
        )


def summarize_drift(raw: dict) -> dict:
    """The verdicts Evidently reached, read from `Snapshot.dict()`: per column and for the dataset.

    Per-column drift comes from Evidently's own tests (a p-value below, or a distance above, the
    method's threshold), so the summary never re-implements a decision rule.
    """
    failed = {t["metric_config"]["metric_id"] for t in raw["tests"] if t["status"] == "FAIL"}
    columns, dataset = {}, None
    for metric in raw["metrics"]:
        config = metric["config"]
        if config["type"].endswith(":ValueDrift"):
            columns[config["column"]] = {
                "method": config["method"],
                "score": float(metric["value"]),
                "threshold": float(config["threshold"]),
                "drifted": metric["id"] in failed,
            }
        elif config["type"].endswith(":DriftedColumnsCount"):
            dataset = metric
    if dataset is None:
        raise RuntimeError("Evidently's DataDriftPreset returned no DriftedColumnsCount metric")
    return {
        "drifted_columns": [col for col, result in columns.items() if result["drifted"]],
        "drifted_count": int(dataset["value"]["count"]),
        "columns_checked": len(columns),
        "drift_share_observed": round(float(dataset["value"]["share"]), 4),
        "dataset_drift": dataset["id"] in failed,
        "columns": columns,
    }
