"""Which served images are worth a person's label: those the model is least sure of.

The margin between the two most probable classes, not the entropy: a margin near 0 means the model
hesitates between two classes, which is what a reviewer can settle with one click; entropy also
grows with probability spread thinly over many unlikely classes, which says less about the
decision the model actually makes (Settles, "Active Learning Literature Survey", 2009, 3.1).
"""
from __future__ import annotations

import numpy as np


def margin(probs: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 probability of each row of (N, C) probabilities: 0 is a coin toss, 1 is certain."""
    if probs.shape[1] < 2:
        return np.ones(len(probs))
    top_two = np.sort(probs, axis=1)[:, -2:]
    return top_two[:, 1] - top_two[:, 0]


def most_uncertain(probs: np.ndarray, count: int) -> np.ndarray:
    """Row indices of the `count` smallest margins, smallest first (ties by row order)."""
    return np.argsort(margin(probs), kind="stable")[:count]
