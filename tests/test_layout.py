"""The code's layout: stages alone at the top of tasks/, no stage importing another, no import cycle,
and dvc.yaml code deps that follow the imports (so `dvc repro` reproduces what the code computes)."""
from __future__ import annotations

import graphlib

import pytest
import yaml

from tasks.common.code_deps import (
    declared_params,
    direct_imports,
    import_closure,
    import_graph,
    stage_code,
    stage_module,
    stale_code_deps,
    write_code_deps,
)
from tasks.training.checkpoint import TRAIN_STAGE
from tests.conftest import PROJECT_ROOT

pytestmark = pytest.mark.pipeline

COMMANDS = {"tasks.production", "tasks.tune"}  # beside the stages at the top of tasks/: promote, rollback, show; the recipe search


def stage_modules() -> set[str]:
    """The module each dvc.yaml stage runs (`python -m tasks.<stage>`)."""
    stages = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]
    return {stage["cmd"].split("-m", 1)[1].split()[0] for stage in stages.values()}


def test_the_top_of_tasks_holds_the_stages_and_the_production_command_only():
    top = {f"tasks.{f.stem}" for f in (PROJECT_ROOT / "tasks").glob("*.py") if f.stem != "__init__"}
    assert top == stage_modules() | COMMANDS


def test_no_stage_imports_another_stage():
    graph, stages = import_graph(), stage_modules() | COMMANDS
    offenders = {stage: sorted(graph[stage] & (stages - {stage})) for stage in stages}
    assert {stage: others for stage, others in offenders.items() if others} == {}


def test_no_import_cycle_in_the_project():
    graphlib.TopologicalSorter(import_graph()).prepare()  # raises CycleError naming the cycle


def test_dvc_code_deps_and_params_follow_the_imports_and_params_lists():
    assert stale_code_deps() == {}, "run: python -m tasks.common.code_deps --write"


def test_every_stage_lists_the_params_it_reads():
    stages = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]
    assert {name: declared_params(stage_module(stage)) is not None for name, stage in stages.items()} == \
        dict.fromkeys(stages, True)


def test_the_settings_of_flows_search_and_service_are_no_stage_code():
    """ops, tune and service are validated where they are read; no stage runs those modules, so editing
    them re-runs no stage and keeps a training checkpoint resumable (its fingerprint hashes the train
    stage's code). The package stage builds service/ into the Bento, service/settings.py included."""
    owners = {"flows/settings.py", "tasks/tuning/settings.py", "service/settings.py"}
    stages = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]
    assert {name: sorted(owners & set(stage_code(stage))) for name, stage in stages.items()} == \
        {name: [] for name in stages}
    assert "service" in stages["package"]["deps"]
    trained = {f.relative_to(PROJECT_ROOT).as_posix() for f in import_closure([TRAIN_STAGE])}
    assert not owners & trained and "tasks/common/config.py" in trained


def test_closure_follows_every_kind_of_import(tmp_path):
    """Relative imports, `from package import module`, imports inside functions, package __init__ files."""
    files = {
        "tasks/__init__.py": "",
        "tasks/stage.py": "from tasks.engine import helpers\n\ndef run():\n    from tasks.engine.late import x\n",
        "tasks/engine/__init__.py": "",
        "tasks/engine/helpers.py": "from . import deep\nimport numpy\n",
        "tasks/engine/deep.py": "from ..shared.paths import OUT\n",
        "tasks/engine/late.py": "x = 1\n",
        "tasks/shared/__init__.py": "",
        "tasks/shared/paths.py": "OUT = 'out'\n",
        "tasks/unused.py": "import tasks.stage\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert direct_imports(tmp_path / "tasks/engine/helpers.py", tmp_path) == {"tasks", "tasks.engine", "tasks.engine.deep"}
    closure = [f.relative_to(tmp_path).as_posix() for f in import_closure([tmp_path / "tasks/stage.py"], tmp_path)]
    assert closure == sorted(set(files) - {"tasks/unused.py"})


def test_code_deps_are_written_into_dvc_yaml_and_keep_the_rest(tmp_path):
    (tmp_path / "tasks/engine").mkdir(parents=True)
    (tmp_path / "tasks/__init__.py").write_text("")
    (tmp_path / "tasks/engine/__init__.py").write_text("")
    (tmp_path / "tasks/engine/helper.py").write_text("")
    (tmp_path / "tasks/stage.py").write_text("from tasks.engine.helper import *\n")
    (tmp_path / "tasks/old.py").write_text("")
    (tmp_path / "dvc.yaml").write_text(
        "# top comment\nstages:\n  stage:\n    cmd: python -m tasks.stage\n    deps:\n"
        "      - data/in.csv\n      - tasks/old.py\n    outs:\n      - out  # kept\n"
    )
    assert stale_code_deps(tmp_path) == {"stage": {
        "missing": ["tasks/__init__.py", "tasks/engine/__init__.py", "tasks/engine/helper.py", "tasks/stage.py"],
        "extra": ["tasks/old.py"]}}
    assert write_code_deps(tmp_path) == ["stage"]
    text = (tmp_path / "dvc.yaml").read_text()
    assert text.startswith("# top comment") and "- out  # kept" in text
    stage = yaml.safe_load(text)["stages"]["stage"]
    assert stage["deps"] == ["data/in.csv", *stage_code(stage, tmp_path)]
    assert stale_code_deps(tmp_path) == {} and write_code_deps(tmp_path) == []


def test_the_package_stage_depends_on_what_the_service_imports():
    stages = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]
    assert "service" in stages["package"]["deps"]
    assert "tasks/model/registry.py" in stage_code(stages["package"])  # imported by service/service.py only
