"""What a person reads of a tuning study: the summary the search prints, reports/tune/study.json (every
trial) and one HTML page to read offline: did the search beat the recipe params.yaml has, which
settings mattered, and which trials were pruned where.

The live view is optuna-dashboard (`dashboard`, make tune-dashboard), which needs the study's storage
and a server; the page is a file: the header (trials by state, the best trial beside the params.yaml
recipe), Optuna's optimisation history, parameter importances and per-epoch curves, and a table
of every trial. plotly.js is embedded once, in the page itself, so it opens without a network.

Parameter importances come from Optuna's default evaluator (PED-ANOVA, no sklearn). With fewer
than two completed trials, settings that never varied, or tied values, it does not fail: it warns
and draws every setting as equally important. The page says so in a sentence instead.
"""
from __future__ import annotations

import html
import json
import os
import sys
import warnings
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState
from plotly.offline import get_plotlyjs

from tasks.common.config import UserError
from tasks.tuning import study as studies
from tasks.tuning.settings import TuningParams

REPORT_DIR = Path("reports/tune")
STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING)
NO_IMPORTANCES = ("<p>Parameter importances need at least two completed trials whose settings differ "
                  "and whose values are not all equal; this study has {n} completed.</p>")


def write_report(workdir: Path, study: optuna.Study, where: str, metric: str, seconds: float) -> dict:
    """reports/tune/study.json (every trial) and index.html; returns the summary printed."""
    trials = [{"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
               "recipe": t.user_attrs.get(studies.RECIPE, "searched"),
               "fold_values": t.user_attrs.get("fold_values"), "retry_of": t.system_attrs.get("failed_trial"),
               "seconds": round((t.datetime_complete - t.datetime_start).total_seconds(), 1)
               if t.datetime_complete and t.datetime_start else None} for t in study.trials]
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    best = study.best_trial if done else None
    written = next((t for t in trials if t["recipe"] == "params.yaml" and t["state"] == "COMPLETE"), None)
    summary = {
        "study": study.study_name, "storage": where, "metric": f"validation {metric}",
        "trials": {state.name.lower(): sum(t.state == state for t in study.trials) for state in TrialState},
        "best": {"number": best.number, "value": best.value, "params": best.params,
                 "recipe": best.user_attrs.get(studies.RECIPE, "searched"),
                 "fold_std": best.user_attrs.get("fold_std")} if best else None,
        "params_yaml_recipe": {"number": written["number"], "value": written["value"]} if written else None,
        "seconds_this_run": seconds,
    }
    out = workdir / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    (out / "study.json").write_text(json.dumps({**summary, "all_trials": trials}, indent=2, default=str))
    write_page(study, out, f"validation {metric}")
    return summary


def dashboard(params: TuningParams, workdir: Path, port: int) -> None:
    """optuna-dashboard on 127.0.0.1:port over the study's storage (the journal file or the database)."""
    url = os.environ.get(studies.STORAGE_ENV)
    storage = url or str(studies.journal_path(workdir, params))
    if not url and not Path(storage).is_file():
        raise UserError(f"no study yet ({storage} not found); run make tune first")
    hint = [] if url else ["--storage-class", "JournalFileStorage"]
    print(f"tune: optuna-dashboard on http://127.0.0.1:{port} (Ctrl-C stops it)", flush=True)
    os.execv(Path(sys.executable).with_name("optuna-dashboard"),
             ["optuna-dashboard", "--host", "127.0.0.1", "--port", str(port), *hint, storage])


def write_page(study: optuna.Study, out_dir: Path, metric: str) -> Path:
    """Write out_dir/index.html on `study` (single-objective), `metric` naming its value
    ("validation accuracy"); return the page's path."""
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    figures = []
    if complete:
        figures.append(optuna.visualization.plot_optimization_history(study, target_name=metric))
    importances = _importances(study, complete, metric)
    if importances is not None:
        figures.append(importances)
    if any(t.intermediate_values for t in trials):
        curves = optuna.visualization.plot_intermediate_values(study)  # takes no target_name
        figures.append(curves.update_layout(xaxis_title="epoch", yaxis_title=metric))
    plots = [fig.to_html(full_html=False, include_plotlyjs=False) for fig in figures]
    if importances is None:
        plots.insert(1 if complete else 0, NO_IMPORTANCES.format(n=len(complete)))
    script = f'<script type="text/javascript">{get_plotlyjs()}</script>' if figures else ""
    name = html.escape(study.study_name)
    page = (f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{name}</title>{script}</head>\n'
            f"<body>\n{_header(study, trials, complete, metric)}\n" + "\n".join(plots)
            + f"\n{_table(trials, metric)}\n</body></html>\n")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "index.html"
    path.write_text(page, encoding="utf-8")
    return path


def _importances(study: optuna.Study, complete: list[FrozenTrial], metric: str):
    """Optuna's importances figure, or None where it could only draw equal bars."""
    names = {k for t in complete for k in t.params}
    if len(complete) < 2 or not any(len({repr(t.params.get(k)) for t in complete}) > 1 for k in names):
        return None
    with warnings.catch_warnings(record=True) as caught:  # PED-ANOVA warns instead of failing
        warnings.simplefilter("always")
        figure = optuna.visualization.plot_param_importances(study, target_name=metric)
    if any("importances will be equal" in str(w.message) for w in caught):
        return None
    return figure


def _header(study: optuna.Study, trials: list[FrozenTrial], complete: list[FrozenTrial], metric: str) -> str:
    counts = ", ".join(f"{sum(t.state == s for t in trials)} {s.name.lower()}" for s in STATES)
    lines = [f"<h1>Study {html.escape(study.study_name)}</h1>",
             f"<p>{len(trials)} trials: {counts}. Direction: {study.direction.name.lower()} {html.escape(metric)}.</p>"]
    if not complete:
        lines.append("<p>Best trial: no completed trial yet.</p>")
    else:
        best = study.best_trial
        lines.append(f"<p>Best trial: #{best.number}, {html.escape(metric)} {_fmt(best.value)}, "
                     f"params {html.escape(_params(best.params))}.")
        recipe = next((t for t in trials if t.user_attrs.get("recipe") == "params.yaml"), None)
        if recipe is not None:
            has = (_fmt(recipe.value) if recipe.state == TrialState.COMPLETE
                   else f"no value (trial #{recipe.number} is {recipe.state.name.lower()})")
            lines[-1] += f" The recipe params.yaml has: {has} (trial #{recipe.number})."
        lines[-1] += "</p>"
    return "\n".join(lines)


def _table(trials: list[FrozenTrial], metric: str) -> str:
    names = sorted({k for t in trials for k in t.params})
    head = ["number", "state", metric, *names, "recipe", "duration (s)", "pruned at epoch"]
    rows = []
    for t in trials:
        seconds = f"{t.duration.total_seconds():.1f}" if t.duration is not None else ""
        pruned = t.last_step if t.state == TrialState.PRUNED and t.last_step is not None else ""
        cells = [t.number, t.state.name, _fmt(t.value), *(_fmt(t.params.get(k)) for k in names),
                 t.user_attrs.get("recipe", "searched"), seconds, pruned]
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    header = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    return (f'<h2>Trials</h2>\n<table border="1" cellpadding="4">\n<thead><tr>{header}</tr></thead>\n'
            "<tbody>\n" + "\n".join(rows) + "\n</tbody></table>\n"
            f"<p>A pruned trial's {html.escape(metric)} is the one it reported at the epoch it was pruned.</p>")


def _fmt(value) -> str:
    if value is None:
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _params(params: dict) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(params.items()))
