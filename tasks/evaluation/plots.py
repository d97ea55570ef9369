"""The evaluate stage's figures: confusion matrix, reliability diagram, worst-mistakes gallery."""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from PIL import Image
from sklearn.metrics import confusion_matrix

ANNOTATE_UP_TO = 25  # classes; beyond this the numbers in the cells would overlap


def plot_confusion(targets: np.ndarray, predicted: np.ndarray, labels: list[str], out: Path) -> None:
    """Counts, and the same rows normalized to 1 (the diagonal is then each class's recall)."""
    counts = confusion_matrix(targets, predicted, labels=np.arange(len(labels)))
    rows = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    side = min(max(4.0, 0.45 * len(labels) + 2.5), 14.0)
    fig, axes = plt.subplots(1, 2, figsize=(2 * side + 1, side))
    accuracy = np.trace(counts) / max(counts.sum(), 1)
    for ax, values, title, fmt in (
        (axes[0], counts, "counts", "d"),
        (axes[1], rows, "share of each true class (rows sum to 1)", ".2f"),
    ):
        im = ax.imshow(values, cmap="Blues", vmin=0)
        slanted = max(len(label) for label in labels) * len(labels) > 40  # long names would run into each other
        ax.set_xticks(range(len(labels)), labels, rotation=45 if slanted else 0, ha="right" if slanted else "center")
        ax.set_yticks(range(len(labels)), labels)
        ax.set(xlabel="predicted class", ylabel="true class", title=title)
        if len(labels) <= ANNOTATE_UP_TO:
            top = values.max() if values.max() > 0 else 1
            for (i, j), v in np.ndenumerate(values):
                if v:
                    ax.text(j, i, format(v, fmt), ha="center", va="center", fontsize=8,
                            color="white" if v > top / 2 else "black")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle(f"Confusion matrix, test split: {counts.sum()} images, accuracy {accuracy:.3f}")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_reliability(curves: dict[str, pd.DataFrame], out: Path) -> None:
    """Accuracy against confidence per bin (on the diagonal = calibrated), and where confidences fall."""
    fig, (diagram, spread) = plt.subplots(1, 2, figsize=(11, 4.6), gridspec_kw={"width_ratios": [1.25, 1]})
    diagram.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfectly calibrated")
    for (name, table), marker in zip(curves.items(), ("o", "s")):
        sizes = 15 + 200 * table["count"] / max(table["count"].max(), 1)
        line, = diagram.plot(table["confidence"], table["accuracy"], marker=None, label=name)
        diagram.scatter(table["confidence"], table["accuracy"], s=sizes, marker=marker, color=line.get_color(),
                        alpha=0.8, zorder=3)
        bins = round(1 / float(table["high"].iloc[0] - table["low"].iloc[0])) if len(table) else 10
        counts = np.zeros(bins)
        counts[table["bin"].to_numpy()] = table["count"].to_numpy()
        spread.stairs(counts, np.linspace(0, 1, bins + 1), fill=True, alpha=0.25, color=line.get_color())
        spread.stairs(counts, np.linspace(0, 1, bins + 1), color=line.get_color(), linewidth=1.5, label=name)
    diagram.set(xlim=(0, 1.02), ylim=(0, 1.02), xlabel="mean confidence in the bin",
                ylabel="accuracy in the bin", title="Reliability (marker size: images in the bin)")
    spread.set(xlim=(0, 1.02), xlabel="confidence of the predicted class", ylabel="test images",
               title="Where the confidences fall")
    for ax in (diagram, spread):
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right" if ax is diagram else "upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_worst_mistakes(images: list[Image.Image], captions: list[str], mistakes: int, total: int, out: Path) -> None:
    """The most confident wrong predictions, most confident first, each with its caption."""
    if not images:
        fig, ax = plt.subplots(figsize=(6, 1.6))
        ax.text(0.5, 0.5, f"No mistakes: all {total} test images are classified correctly.",
                ha="center", va="center", fontsize=12)
        ax.axis("off")
        fig.savefig(out, dpi=110)
        plt.close(fig)
        return
    columns = min(len(images), 8)
    rows = math.ceil(len(images) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(1.9 * columns, 2.25 * rows + 0.5), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, caption in zip(axes.flat, images, captions):
        small = max(img.size) < 64  # upscale tiny images without smoothing, so their pixels stay visible
        ax.imshow(img, interpolation="nearest" if small else "antialiased")
        ax.set_title(caption, fontsize=8)
    shown = (f"All {mistakes} mistakes" if len(images) == mistakes
             else f"The {len(images)} most confident of {mistakes} mistakes")
    fig.suptitle(f"{shown} on {total} test images, most confident first", fontsize=11)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
