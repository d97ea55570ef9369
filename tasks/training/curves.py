"""The training curves as a PNG: loss and accuracy per epoch, readable offline."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def plot_curves(history: pd.DataFrame, out: Path) -> None:
    """Loss and accuracy per epoch as a PNG: readable offline, unlike the Vega plots of `dvc plots`."""
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    for split in ("train", "val"):
        loss_ax.plot(history["epoch"], history[f"{split}_loss"], marker="o", label=split)
        acc_ax.plot(history["epoch"], history[f"{split}_acc"], marker="o", label=split)
    acc_ax.plot(history["epoch"], history["val_macro_f1"], marker=".", linestyle="--", label="val macro F1")
    loss_ax.set(title="Loss", xlabel="epoch", ylabel="cross-entropy")
    acc_ax.set(title="Accuracy", xlabel="epoch", ylabel="accuracy", ylim=(0, 1.02))
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend()
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
