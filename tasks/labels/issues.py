"""Suspect labels from out-of-fold probabilities, by confident learning (cleanlab).

cleanlab estimates, per pair of classes, how many images labelled one class are really the other
(the confident joint), and flags that many of the least likely given labels (`method`). The suspects
are ranked by a label quality score (`rank_by`, lowest first), so a reviewer who stops after N
reviews has seen the N likeliest mistakes.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from cleanlab.filter import find_label_issues
from cleanlab.rank import get_label_quality_scores

from tasks.common.config import LabelsParams
from tasks.data.splits import class_indices

COLUMNS = ["rank", "file", "path", "split", "given_label", "suggested_label", "label_quality",
           "given_probability", "suggested_probability"]


def suspects(frame: pd.DataFrame, probs: np.ndarray, labels: list[str], params: LabelsParams) -> pd.DataFrame:
    """The rows of `frame` whose given label cleanlab finds suspect, most suspect first, with the
    class the out-of-fold model suggests and both classes' probabilities."""
    given = class_indices(frame, labels)
    flagged = find_label_issues(given, probs, filter_by=params.method, n_jobs=1)
    quality = get_label_quality_scores(given, probs, method=params.rank_by)
    # The suggestion is the most probable class other than the given one: an image is flagged because
    # some other class explains it better, and that is the alternative a reviewer should see.
    others = probs.copy()
    others[np.arange(len(given)), given] = -1.0
    suggested = others.argmax(1)
    table = pd.DataFrame({
        "file": frame["file"].to_numpy(), "path": frame["path"].to_numpy(), "split": frame["split_name"].to_numpy(),
        "given_label": frame["label"].to_numpy(), "suggested_label": np.asarray(labels)[suggested],
        "label_quality": quality.round(5), "given_probability": probs[np.arange(len(given)), given].round(4),
        "suggested_probability": probs[np.arange(len(given)), suggested].round(4),
    })[flagged]
    table = table.sort_values(["label_quality", "file"], kind="stable").reset_index(drop=True)
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    return table[COLUMNS]
