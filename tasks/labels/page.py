"""reports/labels/suspects.html: each suspect image with its given and suggested labels, for a person.

Self-contained like the validation summary (inline CSS, thumbnails as data URIs, no scripts), so it
reads the same offline, attached to a ticket or opened from a DVC experiment.
"""
from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from tasks.data.validation_report import STYLE, html_table, thumb_html, thumbnail

EXTRA_STYLE = (".suspects{display:flex;flex-wrap:wrap;gap:1em}.given{color:#b00}.suggested{color:#070}"
               "figure{width:11em}")


def suspect_figure(row, workdir: Path) -> str:
    return (f"<figure>{thumb_html(thumbnail(workdir / row.file))}<figcaption>#{row.rank} "
            f"<code>{html.escape(row.path)}</code> ({row.split})<br>"
            f'given <b class="given">{html.escape(str(row.given_label))}</b> ({row.given_probability:.2f}), '
            f'suggested <b class="suggested">{html.escape(str(row.suggested_label))}</b> '
            f"({row.suggested_probability:.2f})<br>label quality {row.label_quality:.3f}</figcaption></figure>")


def suspects_html(table: pd.DataFrame, summary: dict, folds: list[dict], workdir: Path, shown: int,
                  csv_name: str) -> str:
    fold_rows = [[f["fold"], f["train_images"], f["held_out"], f["held_out_acc"], f["seconds"]] for f in folds]
    figures = "".join(suspect_figure(row, workdir) for row in table.head(shown).itertuples())
    more = (f"<p>The first {shown} of {len(table)} are shown; all are in {html.escape(csv_name)}.</p>"
            if len(table) > shown else "")
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Suspect labels</title><style>{STYLE}{EXTRA_STYLE}</style></head>
<body>
<h1>Suspect labels: {summary["suspects"]} of {summary["images"]} ({summary["suspect_share"]:.1%})</h1>
<p>Each image was judged by a model that never saw it ({summary["folds"]}-fold cross-validation over train and val;
the test split by the mean of the fold models), out-of-fold accuracy {summary["oof_accuracy"]:.3f}. cleanlab
({html.escape(summary["method"])}) flagged the labels below, most likely wrong first
(label quality by {html.escape(summary["rank_by"])}). Nothing was changed: review them (docs/labelling.md).</p>
<h2>Folds</h2>
{html_table(["fold", "training images", "held out", "held-out accuracy", "seconds"], fold_rows)}
<h2>Suspects</h2>
{more}<div class="suspects">{figures}</div>
</body></html>
"""
