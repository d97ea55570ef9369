"""Processes that compute share the cores: each sizes its thread pools by IMGCLF_THREADS or the cores it
may run on, divided among processes side by side, and idle pools sleep instead of spinning."""
from __future__ import annotations

import subprocess
import sys

import onnx
import pytest
import torch
from onnx import TensorProto, helper

from tasks.common import cli
from tasks.common.config import UserError
from tasks.common.threads import THREADS_ENV, available_cores, cores, use_cores
from tasks.model.served import OnnxNetwork
from tests.conftest import PROJECT_ROOT

pytestmark = pytest.mark.training


def test_the_setting_or_the_available_cores_divided_among_processes(monkeypatch):
    monkeypatch.setenv(THREADS_ENV, "6")
    assert (cores(), cores(2), cores(4), cores(12)) == (6, 3, 1, 1)
    monkeypatch.delenv(THREADS_ENV)
    assert cores() == max(1, available_cores() - 1)  # one core stays with whatever else runs there
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # torchrun's processes on this machine share it too
    monkeypatch.setenv(THREADS_ENV, "4")
    before = torch.get_num_threads()
    try:
        assert use_cores() == 2 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)  # later tests in this worker compute as the others do


@pytest.mark.parametrize("value", ["0", "two", "-1", "1.5"])
def test_a_bad_setting_is_one_line_naming_it(monkeypatch, value):
    monkeypatch.setenv(THREADS_ENV, value)
    with pytest.raises(UserError, match=rf"^IMGCLF_THREADS='{value}': the threads to compute with, a whole number"):
        cores()


PARAMS = ["split"]


def threads_seen(params, workdir):
    return {"threads": torch.get_num_threads()}


def test_a_stage_computes_with_its_share(tmp_path, monkeypatch, capsys):
    (tmp_path / "params.yaml").write_text((PROJECT_ROOT / "params.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    before = torch.get_num_threads()
    monkeypatch.setenv(THREADS_ENV, "1")
    try:
        cli.run_stage("split", threads_seen, [])
        assert capsys.readouterr().out.strip() == 'split: {"threads": 1}'
        monkeypatch.setenv(THREADS_ENV, "many")
        with pytest.raises(SystemExit) as exited:
            cli.run_stage("split", threads_seen, [])
        assert exited.value.code == 2 and capsys.readouterr().err.startswith("split: error: IMGCLF_THREADS='many'")
    finally:
        torch.set_num_threads(before)


def test_onnx_runtime_takes_the_share_and_never_spins(tmp_path, monkeypatch):
    graph = helper.make_graph(
        [helper.make_node("Identity", ["images"], ["logits"]), helper.make_node("Identity", ["images"], ["features"])],
        "identity", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [None, 3])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [None, 3]) for name in ("logits", "features")])
    onnx.save(helper.make_model(graph), tmp_path / "model.onnx")
    monkeypatch.setenv(THREADS_ENV, "1")
    for threads, expected in ((0, 1), (3, 3)):  # 0: the process's share; the service's model worker names its own
        options = OnnxNetwork(tmp_path / "model.onnx", threads).session.get_session_options()
        assert options.intra_op_num_threads == expected
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_importing_the_project_makes_idle_openmp_threads_sleep():
    probe = "import os, tasks; print(os.environ['OMP_WAIT_POLICY'])"
    out = subprocess.run([sys.executable, "-c", probe], env={"PATH": ""}, cwd=PROJECT_ROOT,
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "PASSIVE"
