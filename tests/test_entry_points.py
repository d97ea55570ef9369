"""Every command of the project answers -h/--help with its usage and exit code 0, and refuses an unknown
option with exit code 2 (argparse), before any flow, server, model or file work starts.

The commands are found in the source: each module under tasks/, flows/, service/, benchmarks/ and scripts/
with an `if __name__ == "__main__":` block, so a new one is covered without being listed here. The block
runs in this process, in the imported module, with sys.argv as the command line gives it.
"""
from __future__ import annotations

import ast
import contextlib
import importlib
import importlib.util
import os
import subprocess
import sys
import uuid
from pathlib import Path
from types import ModuleType

import psutil
import pytest

from tests.conftest import PROJECT_ROOT

pytestmark = pytest.mark.pipeline

FOLDERS = ("tasks", "flows", "service", "benchmarks", "scripts")
MARKER_ENV = "IMGCLF_ENTRY_POINT_TEST"  # inherited by every process the command starts


def main_block(path: Path) -> ast.If | None:
    """The module's top-level `if __name__ == "__main__":` block, if it has one."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.If) and ast.unparse(node.test) == "__name__ == '__main__'":
            return node
    return None


ENTRY_POINTS = sorted(path.relative_to(PROJECT_ROOT).as_posix()
                      for folder in FOLDERS for path in (PROJECT_ROOT / folder).rglob("*.py") if main_block(path))


def load(relative: str) -> ModuleType:
    """The module as its command runs it: a package's module by name (`python -m`), a script by path
    (`python benchmarks/x.py`, under the name benchmarks.x that the other benchmarks import it by)."""
    name = ".".join(Path(relative).with_suffix("").parts)
    path = PROJECT_ROOT / relative
    if name in sys.modules or (path.parent / "__init__.py").is_file():
        return importlib.import_module(name)
    spec = importlib.util.spec_from_file_location(name, path)
    module = sys.modules[name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_main_block(relative: str, *args: str) -> int | str | None:
    """Run the module's `__main__` block with this command line; the code it exits with."""
    module = load(relative)
    block = ast.Module(body=main_block(PROJECT_ROOT / relative).body, type_ignores=[])
    with pytest.MonkeyPatch.context() as patch, pytest.raises(SystemExit) as exited:
        patch.setattr(sys, "argv", [relative, *args])
        exec(compile(block, relative, "exec"), vars(module))
    return exited.value.code


def test_the_entry_points_are_found():
    assert {"tasks/train.py", "tasks/production.py", "tasks/common/code_deps.py", "flows/pipeline.py",
            "flows/review.py", "scripts/send_traffic.py", "benchmarks/ops_faults.py"} <= set(ENTRY_POINTS)


@pytest.mark.parametrize("relative", ENTRY_POINTS)
def test_help_prints_the_usage_and_exits_0(relative, capsys):
    assert run_main_block(relative, "--help") == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: ") and "-h, --help" in out


@pytest.mark.parametrize("relative", ["tasks/split.py", "flows/pipeline.py"])
def test_an_unknown_option_is_exit_2_with_one_usage_line(relative, capsys):
    assert run_main_block(relative, "--no-such-option") == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: ") and err.count("usage: ") == 1
    assert err.rstrip().endswith("error: unrecognized arguments: --no-such-option")


def started_by(marker: str) -> list[list[str]]:
    """Command lines of the running processes that inherited MARKER_ENV=marker."""
    found = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):  # gone meanwhile, or not ours to read
            if proc.environ().get(MARKER_ENV) == marker:
                found.append(proc.cmdline())
    return found


def test_pipeline_help_starts_no_prefect_server_and_records_no_flow_run(tmp_path):
    marker, prefect_home = uuid.uuid4().hex, tmp_path / "prefect"
    env = {**os.environ, MARKER_ENV: marker, "PREFECT_HOME": str(prefect_home), "PYTHONPATH": str(PROJECT_ROOT)}
    done = subprocess.run([sys.executable, "-m", "flows.pipeline", "--help"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: python -m flows.pipeline")
    assert started_by(marker) == []
    assert not list(prefect_home.glob("prefect.db*"))  # a temporary server would have made its database
