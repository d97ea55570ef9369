"""The tune deployment's flow: the recipe search of params.yaml's `tune` section, through the work pool.

Runs on demand (UI or `prefect deployment run tune/tune`) and, when ops.tune.cron is set, on that
schedule. It continues this data's study (tasks/tune.py) and, with `experiment` (the default), runs
the best recipe as a DVC experiment, so `dvc exp show` lists it beside the workspace. It never
promotes: the best recipe reaches production only through params.yaml, the pipeline and its gate.

The `tune-result` artifact sets the best trial against the recipe production was trained with
(params.yaml at the git commit in the production model's lineage) and params.yaml's recipe now.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import yaml
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.states import Failed

from flows.settings import FlowParams
from tasks import tune as search
from tasks.common.config import UserError, load_params
from tasks.production import show
from tasks.tuning.apply import adopt
from tasks.tuning.space import current_values, value_at


def production_recipe(root: Path, keys: list[str]) -> tuple[str, dict]:
    """(where it came from, {key: value}) for production's model: params.yaml at its git commit."""
    entry = show(root)["current"]
    if entry is None:
        return "no production model yet", {}
    commit = ((entry.get("lineage") or {}).get("git_commit") or "unknown").removesuffix("-dirty")
    shown = subprocess.run(["git", "show", f"{commit}:params.yaml"], cwd=root, capture_output=True, text=True)
    if commit == "unknown" or shown.returncode != 0:
        return f"{entry['model']}: its commit is unknown here", {}
    train = (yaml.safe_load(shown.stdout) or {}).get("train", {})
    return f"{entry['model']} (commit {commit[:8]})", {key: value_at(train, key, None) for key in keys}


def result_markdown(summary: dict, production: tuple[str, dict], now: dict, adopted: str) -> str:
    best, written = summary["best"] or {}, summary["params_yaml_recipe"] or {}
    source, trained = production
    lines = [f"### Recipe search {summary['study']}", "",
             f"{summary['trials']['complete']} completed, {summary['trials']['pruned']} pruned, "
             f"{summary['trials']['fail']} failed; {summary['metric']}.", "",
             f"| | production: {source} | params.yaml now | best trial {best.get('number', '-')} |",
             "|---|---|---|---|"]
    for key in now:
        lines.append(f"| {key} | {trained.get(key, '-')} | {now[key]} | {best.get('params', {}).get(key, '-')} |")
    lines.append(f"| **{summary['metric']}** | - | {written.get('value', '-')} | {best.get('value', '-')} |")
    return "\n".join([*lines, "", adopted, ""])


@flow(name="tune", flow_run_name="tune")
def tune(repo_dir: str = ".", experiment: bool = True) -> dict:
    """Continue the recipe search; with `experiment`, run its best recipe as a DVC experiment."""
    root, logger = Path(repo_dir).resolve(), get_run_logger()
    try:
        params = load_params(root / "params.yaml", FlowParams)
        summary = search.run(params, root)
        adopted = adopt(summary, root, "experiment") if experiment else "not run as an experiment"
    except UserError as err:
        return Failed(message=str(err))
    space_keys = list(params.tune.space)
    now = current_values(params, {key: None for key in space_keys})
    create_markdown_artifact(key="tune-result", description="the best recipe against production's",
                             markdown=result_markdown(summary, production_recipe(root, space_keys), now, adopted))
    logger.info("%s; %s", {k: summary[k] for k in ("study", "trials", "best")}, adopted)
    return {**summary, "adopted": adopted}
