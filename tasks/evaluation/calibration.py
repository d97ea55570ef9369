"""Calibration: how far predicted confidence is from observed accuracy, and temperature scaling.

A network fine-tuned with cross-entropy is usually over-confident: it says 0.99 where it is right
90% of the time. Temperature scaling (Guo et al., 2017) divides the logits by one scalar T fitted
on the validation split; it changes no prediction, only how sure each one is. The train stage fits
T and stores it in the bundle, so evaluation, the gate and the service return the same probabilities.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

BINS = 15  # equal-width confidence bins, as in the ECE literature
T_RANGE = (0.05, 20.0)  # beyond these the validation split is too small or degenerate to trust


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """The T > 0 that minimises the negative log-likelihood of softmax(logits / T) on the targets."""
    logits, targets = logits.detach().double().cpu(), targets.detach().long().cpu()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)  # T = exp(log_t) stays positive
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), targets)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(np.clip(log_t.exp().item(), *T_RANGE))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    return torch.softmax(torch.as_tensor(logits, dtype=torch.float64) / temperature, dim=1).numpy()


def reliability(probs: np.ndarray, targets: np.ndarray, bins: int = BINS) -> pd.DataFrame:
    """Per confidence bin: mean confidence, accuracy and image count (empty bins left out)."""
    confidence = probs.max(1)
    correct = probs.argmax(1) == targets
    # Bin i holds confidences in (i/bins, (i+1)/bins]; a confidence of exactly 0 joins bin 0.
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    rows = [
        {"bin": i, "low": i / bins, "high": (i + 1) / bins, "confidence": float(confidence[index == i].mean()),
         "accuracy": float(correct[index == i].mean()), "count": int((index == i).sum())}
        for i in range(bins) if (index == i).any()
    ]
    return pd.DataFrame(rows, columns=["bin", "low", "high", "confidence", "accuracy", "count"])


def expected_calibration_error(probs: np.ndarray, targets: np.ndarray, bins: int = BINS) -> float:
    """Image-weighted mean |accuracy - confidence| over the confidence bins (0 = perfectly calibrated)."""
    table = reliability(probs, targets, bins)
    return float((table["count"] * (table["accuracy"] - table["confidence"]).abs()).sum() / len(targets))
