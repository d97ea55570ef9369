"""The evaluation report: one self-contained HTML page (figures inlined) that opens offline."""
from __future__ import annotations

import base64
import html
from pathlib import Path

import pandas as pd

from tasks.model.bundle import Bundle

HEADLINE = {  # metrics.json key -> what a reviewer reads
    "accuracy": "Accuracy",
    "balanced_accuracy": "Balanced accuracy (mean recall over classes)",
    "macro_f1": "Macro F1 (every class counts the same)",
    "weighted_f1": "Weighted F1 (classes weighted by their images)",
    "top_k_accuracy": "Top-{top_k} accuracy",
    "accuracy_without_tta": "Accuracy without test-time augmentation",
    "log_loss": "Log loss (calibrated)",
    "log_loss_uncalibrated": "Log loss before temperature scaling",
    "ece": "Expected calibration error (calibrated)",
    "ece_uncalibrated": "Expected calibration error before temperature scaling",
    "temperature": "Temperature (fitted on the validation split)",
}
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .5em 0; } td, th { padding: .25em .8em; border-bottom: 1px solid #eee; }
th { text-align: left; background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.low { background: #fde2e1; } .note { color: #555; font-size: .92em; max-width: 60em; }
img { max-width: 100%; border: 1px solid #eee; }
"""


def write_report(out: Path, bundle: Bundle, metrics: dict, per_class: pd.DataFrame, slices: pd.DataFrame,
                 runtime: dict, figures: dict[str, Path]) -> None:
    """Headline metrics, per-class and per-slice tables, the serving runtimes, and every figure that
    exists, inlined."""
    headline = [(name.format(top_k=metrics.get("top_k")), metrics[key]) for key, name in HEADLINE.items()
                if key in metrics]
    worst_f1 = per_class["f1"].nsmallest(min(3, len(per_class))).max()
    parts = [
        f"<h1>Evaluation: {html.escape(bundle.backbone)}, {len(bundle.labels)} classes, "
        f"{metrics['test_images']} test images</h1>",
        f"<p class=note>Input {bundle.image_size} px; test-time augmentation: {html.escape(bundle.tta)}. "
        "Probabilities are the served ones: logits divided by the temperature, then softmax.</p>",
        "<h2>Headline</h2>", _table(["metric", "value"], [[name, value] for name, value in headline]),
        "<h2>Per class</h2>",
        "<p class=note>Shaded: the three lowest F1 scores (more on a tie), the classes to look at first.</p>",
        _table(["class", "precision", "recall", "F1", "support"],
               per_class[["class", "precision", "recall", "f1", "support"]].values.tolist(),
               low=lambda row: row[3] <= worst_f1 and row[3] < 1.0),
        "<h2>Slices</h2>",
        "<p class=note>Accuracy by image property, in equal-count buckets: a bucket well below the others "
        "is a kind of image the model has not learned (brightness: mean luminance 0-255; short_side: "
        "the shorter side in pixels).</p>",
        _table(["property", "bucket", "images", "accuracy", "mean confidence"], slices.values.tolist()),
        *_runtimes(runtime),
    ]
    for title, path in figures.items():
        if path.is_file():
            data = base64.b64encode(path.read_bytes()).decode()
            parts += [f"<h2>{html.escape(title)}</h2>",
                      f'<img alt="{html.escape(title)}" src="data:image/png;base64,{data}">']
    page = (f"<!doctype html><html><head><meta charset=utf-8><title>Evaluation report</title>"
            f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>")
    out.write_text(page)


def _runtimes(runtime: dict) -> list[str]:
    """The runtimes measured for serving (tasks/evaluation/runtimes.py) and the one chosen."""
    timed = runtime["timed_on"]
    rows = [[name + (" (served)" if name == runtime["runtime"] else ""),
             *(f.get(key, "") for key in ("accuracy", "macro_f1", "ece", "top1_agreement",
                                         "max_probability_difference", "batch_img_s", "single_img_s"))]
            if "error" not in f else [name, f"not made: {f['error']}", "", "", "", "", "", ""]
            for name, f in runtime["figures"].items()]
    return [
        "<h2>Serving runtime</h2>",
        f"<p class=note>Served by <b>{html.escape(runtime['runtime'])}</b>: {html.escape(runtime['reason'])}. "
        f"Images/s: the network alone, in this process, on {timed['cpus']} CPUs ({html.escape(timed['torch_device'])} "
        f"for PyTorch), in one batch of {timed['timed_batch']} and one image at a time; every runtime scored on "
        "the same test images with the same preprocessing, temperature and test-time augmentation.</p>",
        _table(["runtime", "accuracy", "macro F1", "ECE", "top-1 agreement with PyTorch",
                "largest probability difference", "images/s (batch)", "images/s (one)"], rows),
    ]


def _table(header: list[str], rows: list[list], low=lambda row: False) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for row in rows:
        shade = " low" if low(row) else ""
        cells = "".join(
            f'<td class="num{shade}">{_number(v)}</td>' if isinstance(v, (int, float)) and not isinstance(v, bool)
            else f'<td class="{shade.strip()}">{html.escape(str(v))}</td>'
            for v in row)
        body.append(f"<tr>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _number(value) -> str:
    return str(value) if isinstance(value, int) or float(value).is_integer() and abs(value) > 1 else f"{value:.4f}"
