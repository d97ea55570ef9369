"""Prefect flow that runs the dvc.yaml stages in order, one task per stage, through DVC.

DVC decides what is up to date, so `dvc repro` and this flow produce the same artifacts and the
same dvc.lock; the flow adds orchestration (logs, states, artifacts) on top. It runs on Prefect's
ephemeral API: no server to start.

    python -m flows.pipeline            # the whole pipeline
    python -m flows.pipeline train      # only the stages up to and including train
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

import tasks  # noqa: F401  (switches telemetry off before prefect and dvc are imported)
import yaml
from dvc.exceptions import DvcException
from dvc.repo import Repo
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.states import Failed

from tasks.cli import ERROR_FILE_ENV
from tasks.config import UserError, load_params
from tasks.evaluate import METRICS_JSON


def dvc_stages(repo_dir: Path) -> list[str]:
    """Stage names in dvc.yaml order (written upstream first)."""
    return list(yaml.safe_load((repo_dir / "dvc.yaml").read_text())["stages"])


def preflight(root: Path) -> None:
    """Fail before any stage on mistakes DVC would report obscurely: bad params, a missing data.root."""
    params = load_params(root / "params.yaml")
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
    """The test metrics as a Prefect table artifact, one row per class."""
    metrics = json.loads((repo_dir / METRICS_JSON).read_text())
    rows = [{"class": label, **values} for label, values in metrics["per_class"].items()]
    create_table_artifact(
        key="evaluation-metrics",
        table=rows,
        description=f"Test split: accuracy {metrics['accuracy']:.4f}, macro F1 {metrics['macro_f1']:.4f}, "
        f"{metrics['test_images']} images",
    )


@flow(name="image-classification-pipeline")
def pipeline(repo_dir: str = ".", until: str | None = None):
    """Run every dvc.yaml stage in order (or up to `until`); stop at the first failure."""
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
    summary = {}
    for stage in stages:
        state = run_dvc_stage(stage, root, return_state=True)
        if state.is_failed():
            return Failed(message=state.message)
        summary[stage] = state.result()
        if stage == "evaluate":
            publish_metrics(root)
        if stage == until:
            break
    return summary


def main() -> None:
    until = sys.argv[1] if len(sys.argv) > 1 else None
    state = pipeline(until=until, return_state=True)
    if state.is_failed():
        print(f"pipeline stopped: {state.message}", file=sys.stderr)
        sys.exit(1)
    for stage, status in state.result().items():
        print(f"{stage:>9}: {status}")


if __name__ == "__main__":
    main()
