"""Data-parallel training from the pipeline itself: `train.processes: 2` and plain `dvc repro`."""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import torch
import yaml

from tasks import train
from tasks.common.config import UserError
from tasks.training import checkpoint
from tasks.training.distributed import NODE_RANK_ENV, torchrun_command
from tests.conftest import PROJECT_ROOT, free_port, make_params
from tests.projects import new_project

pytestmark = pytest.mark.training

EPOCHS = 6


def dvc_project(root: Path, **train_values) -> Path:
    """A DVC project with the real dvc.yaml and code, reading 36 tiny images."""
    return new_project(root, {"cat": 12, "dog": 12, "fox": 12}, train={
        "device": "cpu", "image_size": 48, "batch_size": 4, "epochs": EPOCHS,
        "early_stopping": {"metric": "accuracy", "patience": 0, "min_delta": 0.0}, **train_values})


def repro(root: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.Popen([sys.executable, "-m", "dvc", "repro", *args], cwd=root, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def training_workers(launcher: subprocess.Popen) -> list[psutil.Process]:
    """The `python -m tasks.train` processes torchrun started under this command."""
    found = []
    for child in psutil.Process(launcher.pid).children(recursive=True):
        try:
            parent = child.parent()
            if child.cmdline()[-2:] == ["-m", "tasks.train"] and "torch.distributed.run" in parent.cmdline():
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return found


@pytest.mark.slow(reason="torchrun trains in two processes, one is killed, the run resumes")
def test_dvc_repro_trains_in_two_processes_and_resumes_after_a_killed_worker(tmp_path):
    root = dvc_project(tmp_path / "project", processes=2)
    first = repro(root, "train")
    last = root / checkpoint.CHECKPOINT_DIR / checkpoint.LAST
    killed = None
    deadline = time.time() + 300
    while time.time() < deadline and first.poll() is None and killed is None:
        if last.is_file() and torch.load(last, weights_only=True)["epoch"] >= 1:
            workers = training_workers(first)
            if len(workers) == 2:
                killed = workers[1]
                killed.send_signal(signal.SIGKILL)
        time.sleep(0.05)
    output, _ = first.communicate(timeout=120)
    assert killed is not None, output
    assert first.returncode != 0, output
    assert "train: error: training under torchrun failed" in output and "resume from the last epoch" in output
    done = torch.load(last, weights_only=True)["epoch"]
    assert 1 <= done < EPOCHS

    second = repro(root, "train")
    output, _ = second.communicate(timeout=600)
    assert second.returncode == 0, output
    assert f"resuming from checkpoints/last.pt: epoch {done} of {EPOCHS} done" in output

    summary = json.loads((root / train.SUMMARY_JSON).read_text())
    split = {name: pd.read_csv(root / f"data/split/{name}.csv") for name in ("train", "val")}
    assert summary["processes"] == 2
    assert summary["steps_per_epoch"] == math.ceil(len(split["train"]) // 2 / 4)  # a shard each, 4 per step
    history = pd.read_csv(root / train.HISTORY_CSV)
    assert list(history["epoch"]) == list(range(1, EPOCHS + 1))
    # Validation is summed over both processes: accuracy is a whole number of the val images.
    n_val = len(split["val"])
    assert all(abs(acc * n_val - round(acc * n_val)) < 1e-6 for acc in history["val_acc"])
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    assert lock["stages"]["train"]["params"]["params.yaml"]["train"]["processes"] == 2
    status = subprocess.run([sys.executable, "-m", "dvc", "status", "train"], cwd=root, capture_output=True, text=True)
    assert "up to date" in status.stdout, status.stdout


@pytest.mark.slow(reason="two torchrun nodes meet at a rendezvous and train")
def test_two_nodes_meet_at_the_rendezvous_and_node_0_gets_the_outputs(tmp_path):
    port = free_port()
    node0 = dvc_project(tmp_path / "node0", nodes=2, rendezvous=f"127.0.0.1:{port}", epochs=2)
    done = repro(node0, "split")
    assert done.wait(300) == 0, done.stdout.read()
    node1 = tmp_path / "node1"  # another machine: the same commit, the data pulled
    shutil.copytree(node0, node1)
    env1 = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), NODE_RANK_ENV: "1"}
    second = subprocess.Popen([sys.executable, "-m", "tasks.train"], cwd=node1, env=env1, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    first = repro(node0, "train")
    output0, _ = first.communicate(timeout=600)
    output1, _ = second.communicate(timeout=120)
    assert first.returncode == 0, output0
    assert second.returncode == 0, output1
    assert json.loads((node0 / train.SUMMARY_JSON).read_text())["processes"] == 2
    assert 'train: {"node": 1, "nodes": 2, "outputs": "written on node 0"}' in output1
    assert not (node1 / train.SUMMARY_JSON).exists() and not (node1 / "models").exists()


def test_the_launch_command_for_one_machine_and_for_several(monkeypatch):
    alone = torchrun_command(2, "tasks.train")
    assert alone[-4:] == ["--nproc-per-node=2", "--standalone", "-m", "tasks.train"]
    monkeypatch.setenv(NODE_RANK_ENV, "1")
    second_node = torchrun_command(4, "tasks.train", nodes=2, rendezvous="node0.lan:29500")
    assert second_node[3:-2] == ["--nproc-per-node=4", "--nnodes=2", "--node-rank=1", "--master-addr=node0.lan",
                                 "--master-port=29500"]
    monkeypatch.setenv(NODE_RANK_ENV, "2")
    with pytest.raises(UserError, match="TRAIN_NODE_RANK=2 but train.nodes is 2: number the machines 0 to 1"):
        torchrun_command(4, "tasks.train", nodes=2, rendezvous="node0.lan:29500")


def test_several_nodes_need_a_rendezvous():
    with pytest.raises(UserError, match="train: nodes above 1 need rendezvous: HOST:PORT of the first node"):
        make_params(train={"nodes": 2})
    with pytest.raises(UserError, match="train.rendezvous: must be HOST:PORT"):
        make_params(train={"nodes": 2, "rendezvous": "node0"})
    with pytest.raises(UserError, match="train.processes: must be auto"):
        make_params(train={"processes": 0})
