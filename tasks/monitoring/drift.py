"""Data drift with Evidently: one report over the monitored columns, and the verdicts it reached."""
from __future__ import annotations

import math
import warnings
from datetime import datetime

import pandas as pd
from evidently import DataDefinition, Dataset, Report, Run
from evidently.core.metric_types import ByLabelCalculation, ByLabelMetric
from evidently.legacy.renderers.html_widgets import header_text
from evidently.legacy.tests.base_test import TestStatus
from evidently.metrics import MeanValue, UniqueValueCount, ValueDrift
from evidently.presets import DataDriftPreset

from tasks.common.config import MonitorParams
from tasks.monitoring.features import FEATURE_COLUMNS

# Confidence is compared too: a falling confidence is often the first sign of unfamiliar inputs.
NUMERICAL_COLUMNS = FEATURE_COLUMNS + ["confidence"]
CATEGORICAL_COLUMNS = ["prediction"]
DRIFT_COLUMNS = NUMERICAL_COLUMNS + CATEGORICAL_COLUMNS
SHOWN = 3  # fired tests named in a verdict line (a log line, an event); drift.json has every column


class ColumnDriftFlags(ByLabelMetric):
    """1 per column whose drift test failed, 0 otherwise: lets a dashboard show which columns drifted.

    Evidently stores per-column drift only as a score (a p-value or a distance, by method), and the
    verdict only as a test, which dashboards cannot plot; this metric turns the verdict into a value.
    `methods` and `thresholds` are the preset's per-column settings (absent: Evidently's default).
    """

    columns: list[str]
    methods: dict[str, str] = {}
    thresholds: dict[str, float] = {}


class ColumnDriftFlagsCalculation(ByLabelCalculation[ColumnDriftFlags]):
    def calculate(self, context, current_data, reference_data):
        # The preset's ValueDrift of each column has the same configuration, so the context returns
        # that result (computed once) with its test: the verdict is the one the report shows.
        flags = {}
        for column in self.metric.columns:
            drift = context.calculate_metric(ValueDrift(
                column=column, method=self.metric.methods.get(column), threshold=self.metric.thresholds.get(column),
            ).to_calculation())
            if not drift.tests:
                raise ValueError("ColumnDriftFlags reads the drift tests: run the report with include_tests=True")
            flags[column] = float(any(test.status == TestStatus.FAIL for test in drift.tests))
        result = self.result(flags)
        drifted = ", ".join(column for column, flag in flags.items() if flag) or "none"
        result.widget = [header_text(label=f"Columns whose drift test fired: {drifted}")]
        return result

    def display_name(self) -> str:
        return "Column drift flags"


def column_tests(monitor: MonitorParams) -> tuple[dict[str, str], dict[str, float]]:
    """The test and threshold of each column under the monitor's detector (empty: Evidently's defaults).

    bonferroni: KS on every numeric column and chi-squared on the predicted labels, each at
    alpha / columns, so that the chance of a false alarm on a window without drift stays below
    alpha however many columns there are. share: Evidently's default test and threshold per column
    (KS or chi-squared at 0.05 up to 1,000 reference rows, Wasserstein or Jensen-Shannon distance above).
    """
    if monitor.detector == "share":
        return {}, {}
    methods = {column: "ks" for column in NUMERICAL_COLUMNS} | {column: "chisquare" for column in CATEGORICAL_COLUMNS}
    return methods, {column: monitor.alpha / len(DRIFT_COLUMNS) for column in DRIFT_COLUMNS}


def window_drift_share(monitor: MonitorParams) -> float:
    """The share of drifted columns that makes the window drifted: any one column for bonferroni."""
    return monitor.drift_share if monitor.detector == "share" else 1 / len(DRIFT_COLUMNS)


def drift_snapshot(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    monitor: MonitorParams,
    timestamp: datetime | None = None,
    tags: list[str] | None = None,
    metadata: dict[str, str] | None = None,
) -> Run:
    """Run Evidently's DataDriftPreset on the drift columns, with its per-column and dataset tests
    configured for the monitor's detector (`column_tests`, `window_drift_share`).

    Per-column drift flags, the mean confidence and the mix of predicted labels ride along, so that
    a dashboard built from these snapshots can plot them per window. `timestamp` (the window's end;
    now if None), `tags` and `metadata` are stored in the snapshot: the dashboard's time axis and
    filters use them.
    """
    methods, thresholds = column_tests(monitor)
    definition = DataDefinition(numerical_columns=NUMERICAL_COLUMNS, categorical_columns=CATEGORICAL_COLUMNS)
    report = Report(
        [
            DataDriftPreset(columns=DRIFT_COLUMNS, drift_share=window_drift_share(monitor),
                            per_column_method=methods or None, per_column_threshold=thresholds or None),
            ColumnDriftFlags(columns=DRIFT_COLUMNS, methods=methods, thresholds=thresholds),
            MeanValue(column="confidence"),
            UniqueValueCount(column="prediction"),
        ],
        include_tests=True,
    )
    with warnings.catch_warnings():
        # Constant columns (every image the same width) make numpy warn while Evidently plots them.
        warnings.simplefilter("ignore", RuntimeWarning)
        return report.run(
            Dataset.from_pandas(current[DRIFT_COLUMNS], data_definition=definition),
            Dataset.from_pandas(reference[DRIFT_COLUMNS], data_definition=definition),
            timestamp=timestamp,
            tags=tags,
            metadata=metadata,
        )


def verdict_line(drifted: bool, columns: dict, needed: int) -> str:
    """One line for logs and events: the verdict, and the first tests that fired with statistic and threshold."""
    fired = [f"{col}: {r['method']} {r['score']:.3g} (threshold {r['threshold']:.3g})"
             for col, r in columns.items() if r["drifted"]]
    named = "; ".join(fired[:SHOWN]) + (f"; {len(fired) - SHOWN} more" if len(fired) > SHOWN else "")
    return (f"{'drift' if drifted else 'no drift'}: {len(fired)} of {len(columns)} column tests fired "
            f"({needed} needed){': ' + named if fired else ''}")


def summarize_drift(raw: dict) -> dict:
    """The verdicts Evidently reached, read from `Snapshot.dict()`: per column and for the dataset.

    Per-column drift comes from Evidently's own tests (a p-value below, or a distance above, the
    method's threshold), so the summary never re-implements a decision rule. The mean confidence
    and the prediction mix ({label: share}) of the current window are added when the snapshot has
    them (snapshots from `drift_snapshot` do). `verdict` says it in one line: which tests fired,
    with their statistic and threshold.
    """
    failed = {t["metric_config"]["metric_id"] for t in raw["tests"] if t["status"] == "FAIL"}
    columns, dataset, extras = {}, None, {}
    for metric in raw["metrics"]:
        config = metric["config"]
        kind = config["type"].rsplit(":", 1)[-1]
        if kind == "ValueDrift":
            columns[config["column"]] = {
                "method": config["method"],
                "score": float(metric["value"]),
                "threshold": float(config["threshold"]),
                "drifted": metric["id"] in failed,
            }
        elif kind == "DriftedColumnsCount":
            dataset = metric
        elif kind == "MeanValue" and config["column"] == "confidence":
            extras["mean_confidence"] = round(float(metric["value"]), 4)
        elif kind == "UniqueValueCount" and config["column"] == "prediction":
            shares = metric["value"]["shares"]
            extras["prediction_mix"] = {str(label): round(float(shares[label]), 4) for label in sorted(shares, key=str)}
    if dataset is None:
        raise RuntimeError("Evidently's DataDriftPreset returned no DriftedColumnsCount metric")
    drifted = dataset["id"] in failed
    needed = math.ceil(round(float(dataset["config"]["drift_share"]) * len(columns), 6))
    return {
        "verdict": verdict_line(drifted, columns, needed),
        "drifted_columns": [col for col, result in columns.items() if result["drifted"]],
        "drifted_count": int(dataset["value"]["count"]),
        "columns_checked": len(columns),
        "drift_share_observed": round(float(dataset["value"]["share"]), 4),
        "dataset_drift": drifted,
        "columns": columns,
        **extras,
    }
