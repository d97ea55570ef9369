"""Prefect flow that runs the dvc.yaml stages in order, one task per stage, through DVC.

DVC decides what is up to date, so `dvc repro` and this flow produce the same artifacts and the
same dvc.lock; the flow adds orchestration (logs, states, artifacts) on top. It runs on Prefect's
ephemeral API: no server to start.

    python -m flows.pipeline            # the whole pipeline, then promotion if the gate passed
    python -m flows.pipeline train      # only the stages up to and including train

After the stages, the flow promotes the packaged challenger to production (tasks/production.py)
when the gate stage passed it, and stops before promotion when the gate refused it. Then it pushes
the data, every stage output and the production archives (deploy/store) to the project's default
DVC remote, so another machine's `dvc pull` gets them. The gate's decision and the evaluation
report are Prefect artifacts.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

import yaml
from dvc.exceptions import DvcException
from dvc.repo import Repo
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.states import Failed

import tasks  # noqa: F401  (switches telemetry off before prefect and dvc are imported)
from flows.settings import FlowParams
from tasks import production
from tasks.common.cli import ERROR_FILE_ENV
from tasks.common.config import UserError, load_params
from tasks.common.paths import DECISION_JSON, METRICS_JSON, REPORT_HTML


def dvc_stages(repo_dir: Path) -> list[str]:
    """Stage names in dvc.yaml order (written upstream first)."""
    return list(yaml.safe_load((repo_dir / "dvc.yaml").read_text())["stages"])


def preflight(root: Path) -> None:
    """Fail before any stage on mistakes DVC would report obscurely: bad params, a missing data.root."""
    params = load_params(root / "params.yaml", FlowParams)
    data_root = root / params.data.root
    if params.data.root != params.sample.out_dir and not data_root.is_dir():
        raise UserError(
            f"data.root: {data_root} is not a folder; point data.root in params.yaml at a folder "
            "with one sub-folder of images per class"
        )


def root_cause(err: BaseException) -> str:
    """DVC wraps the real problem (a missing dependency, a failed command) in 'failed to reproduce'."""
    while err.__cause__ is not None:
        err = err.__cause__
    return str(err)


@task(name="dvc-stage", task_run_name="{stage}")
def run_dvc_stage(stage: str, repo_dir: Path):
    """Reproduce one stage; DVC skips it when its deps, params and outs are unchanged."""
    logger = get_run_logger()
    with tempfile.NamedTemporaryFile("r", suffix=".err") as err_file:
        os.environ[ERROR_FILE_ENV] = err_file.name
        try:
            # DVC's Python API resolves output paths against the working directory.
            with contextlib.chdir(repo_dir), Repo(str(repo_dir)) as repo:
                ran = repo.reproduce(stage, single_item=True)
        except DvcException as err:
            reason = Path(err_file.name).read_text().strip() or root_cause(err)
            logger.error("stage %s failed: %s", stage, reason)
            return Failed(message=f"stage {stage} failed: {reason}")
        finally:
            os.environ.pop(ERROR_FILE_ENV, None)
    status = "ran" if ran else "skipped (up to date)"
    logger.info("stage %s: %s", stage, status)
    return status


def publish_metrics(repo_dir: Path) -> None:
    """The test metrics as Prefect artifacts: a table per class, and the headline with the report's link."""
    metrics = json.loads((repo_dir / METRICS_JSON).read_text())
    rows = [{"class": label, **values} for label, values in metrics["per_class"].items()]
    headline = (f"Test split: accuracy {metrics['accuracy']:.4f}, macro F1 {metrics['macro_f1']:.4f}, "
                f"{metrics['test_images']} images")
    create_table_artifact(key="evaluation-metrics", table=rows, description=headline)
    create_markdown_artifact(
        key="evaluation-report",
        markdown=f"### Evaluation\n\n{headline}; ECE {metrics['ece']:.4f} "
        f"(before temperature scaling {metrics['ece_uncalibrated']:.4f}).\n\n"
        f"Full report (confusion matrix, calibration, worst mistakes, slices): "
        f"[{REPORT_HTML}]({(repo_dir / REPORT_HTML).as_uri()})",
        description=headline,
    )


def fair_test_lines(decision: dict) -> list[str]:
    """How many test images the models were graded on, what was left out, and accuracy per source slice."""
    left_out = decision.get("left_out") or {"images": 0, "why": "none left out"}
    lines = [f"Graded on {decision['test_images']} test images neither model trained or validated on; "
             f"{left_out['images']} left out ({left_out['why']}).", "",
             "| test images from | images | challenger | champion |", "|---|---|---|---|"]
    for name, figures in (decision.get("slices") or {}).items():
        champion = figures["champion_accuracy"]
        lines.append(f"| {name} | {figures['images']} | {figures['challenger_accuracy']} | "
                     f"{'-' if champion is None else champion} |")
    return lines


def publish_decision(repo_dir: Path) -> dict:
    """The gate's decision as a Prefect artifact and in the log; returns it."""
    decision = json.loads((repo_dir / DECISION_JSON).read_text())
    champion = decision["champion"]["model"] if decision["champion"] else "none"

    def runtime(entry: dict | None) -> str:
        served = (entry or {}).get("runtime")
        return f"{served['name']} ({served['accuracy']})" if served else "-"

    lines = [
        f"### Gate: {decision['verdict']}", "",
        "| | accuracy | served by (its accuracy there) |", "|---|---|---|",
        f"| challenger (this run) | {decision['challenger_accuracy']} | {runtime(decision['challenger'])} |",
        f"| champion ({champion}) | {decision['champion_accuracy'] if decision['champion'] else '-'} "
        f"| {runtime(decision['champion'])} |", "",
        *[f"- {reason}" for reason in decision["reasons"]], "",
        *fair_test_lines(decision), "",
        f"Margin {decision['margin']}, alpha {decision['alpha']}, McNemar p = {decision['p_value']}. "
        f"Evaluation report: [{REPORT_HTML}]({(repo_dir / REPORT_HTML).as_uri()})",
    ]
    create_markdown_artifact(key="gate-decision", markdown="\n".join(lines),
                             description=f"{decision['verdict']}: {'; '.join(decision['reasons'])}")
    logger = get_run_logger()
    log = logger.info if decision["passed"] else logger.warning
    log("gate: %s: %s", decision["verdict"], "; ".join(decision["reasons"]))
    return decision


@task(name="promote")
def promote_challenger(repo_dir: Path) -> str:
    """Move the production pointer to the challenger the gate passed."""
    try:
        entry = production.promote(repo_dir)
    except UserError as err:
        get_run_logger().error("promotion failed: %s", err)
        return Failed(message=f"promotion failed: {err}")
    get_run_logger().info("promoted %s to production (serve: bentoml serve %s)", entry["model"], entry["bento"])
    return f"promoted {entry['model']}"


@task(name="dvc-push")
def push_outputs(repo_dir: Path) -> str:
    """`dvc push` to the project's default remote: data, stage outputs and deploy/store, for every
    other machine's `dvc pull`. Without a default remote there is nothing to push to."""
    with contextlib.chdir(repo_dir), Repo(str(repo_dir)) as repo:
        remote = repo.config["core"].get("remote")
        if not remote:
            get_run_logger().warning("no default DVC remote: outputs stay in this machine's DVC cache "
                                     "(dvc remote add -d NAME URL to share them)")
            return "not pushed: no default DVC remote"
        try:
            pushed = repo.push()
        except (DvcException, OSError) as err:  # an unreachable or unwritable remote
            get_run_logger().error("dvc push to %s failed: %s", remote, root_cause(err))
            return Failed(message=f"dvc push to remote {remote!r} failed: {root_cause(err)}; "
                                  "run dvc push once it is reachable")
    get_run_logger().info("dvc push: %d files to remote %s", pushed, remote)
    return f"{pushed} files pushed to remote {remote}"


FLOW_NAME = "image-classification-pipeline"


@flow(name=FLOW_NAME)
def pipeline(repo_dir: str = ".", until: str | None = None, promote: bool = True, push: bool = True):
    """Run every dvc.yaml stage in order (or up to `until`); stop at the first failure. Then, with
    `promote`, move production to the new model if the gate passed it, and with `push`, send every
    output to the default DVC remote."""
    root = Path(repo_dir).resolve()
    logging.getLogger("dvc").setLevel(logging.WARNING)  # the task logs ran/skipped itself
    # DVC runs `python -m tasks.<stage>`: make that the interpreter running this flow.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    try:
        preflight(root)
    except UserError as err:
        return Failed(message=str(err))
    stages = dvc_stages(root)
    if until is not None and until not in stages:
        return Failed(message=f"unknown stage {until!r}; dvc.yaml has: {', '.join(stages)}")
    summary, decision = {}, None
    for stage in stages:
        state = run_dvc_stage(stage, root, return_state=True)
        if state.is_failed():
            return Failed(message=state.message)
        summary[stage] = state.result()
        if stage == "evaluate":
            publish_metrics(root)
        if stage == "gate":
            decision = publish_decision(root)
        if stage == until:
            return summary
    if promote and decision is not None:
        if decision["passed"]:
            state = promote_challenger(root, return_state=True)
            if state.is_failed():
                return Failed(message=state.message)
            summary["promote"] = state.result()
        else:
            summary["promote"] = f"not promoted ({decision['verdict']}): {'; '.join(decision['reasons'])}"
    if push:
        state = push_outputs(root, return_state=True)
        if state.is_failed():
            return Failed(message=state.message)
        summary["push"] = state.result()
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("until", nargs="?", metavar="STAGE",
                        help="stop after this dvc.yaml stage (no promotion, no push); "
                             "default: every stage, then promotion if the gate passed, then dvc push")
    args = parser.parse_args(argv)
    state = pipeline(until=args.until, return_state=True)
    if state.is_failed():
        print(f"pipeline stopped: {state.message}", file=sys.stderr)
        sys.exit(1)
    for step, status in state.result().items():
        print(f"{step:>9}: {status}")


if __name__ == "__main__":
    main()
