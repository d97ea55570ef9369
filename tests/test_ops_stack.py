"""The operations command itself: start the stack, retrain through the work pool's worker, stop with
Ctrl-C, start again and find everything where it was; and its one-line errors."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows.ops import main as ops_main
from tasks.common.paths import POINTER
from tasks.labels.studio import is_running
from tasks.model.registry import read_pointer
from tests.conftest import PROJECT_ROOT, free_port
from tests.projects import new_project

pytestmark = pytest.mark.ops

READY = "Ctrl-C stops everything."


def ops_project(root: Path, **ops) -> Path:
    """A project folder the operations command can run in: code, dvc.yaml, params, tiny images, free ports."""
    ports = {"prefect_port": free_port(), "evidently_port": free_port(), "service_port": free_port(),
             "label_studio_port": free_port()}
    return new_project(root, code=("tasks", "flows", "service"), ops={**ports, **ops})


def start_ops(root: Path, env: dict) -> subprocess.Popen:
    """`python -m flows.ops` in root, returned once it says it is ready."""
    proc = subprocess.Popen([sys.executable, "-m", "flows.ops"], cwd=root, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if READY in line:
            return proc
    raise AssertionError(f"the operations command exited ({proc.wait()}):\n{''.join(lines)}")


def ctrl_c(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGINT)
    return proc.wait(60)


def service_ready(url: str) -> bool:
    try:
        return httpx.get(url + "/readyz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.slow(reason="starts the whole stack twice and runs the pipeline through its worker")
def test_the_stack_retrains_through_its_worker_stops_cleanly_and_resumes(tmp_path: Path):
    root = ops_project(tmp_path / "project")
    ops = yaml.safe_load((root / "params.yaml").read_text())["ops"]
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml")}
    api = f"http://127.0.0.1:{ops['prefect_port']}/api"

    started = time.monotonic()
    proc = start_ops(root, env)
    startup = time.monotonic() - started
    try:
        with temporary_settings(updates={PREFECT_API_URL: api}):
            run = run_deployment("retrain/retrain", parameters={"trigger": "manual"}, timeout=900)
            assert run.state.is_completed(), run.state.message
            with get_client(sync_client=True) as client:
                body = {"artifacts": {"key": {"any_": ["retrain-lineage"]}}, "sort": "CREATED_DESC",
                        "limit": 1, "offset": 0}
                (lineage,) = client.request("POST", "/artifacts/filter", json=body).json()
                deployment_id = client.read_deployment_by_name("retrain/retrain").id
        assert "| trigger | manual |" in lineage["data"] and "data_root_hash" in lineage["data"]
        production = read_pointer(root / POINTER)["current"]
        assert production is not None  # no champion: the gate passed it
        # The stack starts the service once production has a model; it answers with that model.
        service = f"http://127.0.0.1:{ops['service_port']}"
        deadline = time.monotonic() + 120
        while not service_ready(service):
            assert time.monotonic() < deadline, (root / ".ops/logs/service.log").read_text()[-3000:]
            time.sleep(1)
        image = next((root / "images/cat").iterdir())
        answer = httpx.post(service + "/classify", files=[("images", (image.name, image.read_bytes(), "image/png"))],
                            timeout=30)
        assert answer.status_code == 200 and answer.json()["model"] == production["model"], answer.text
        # Label Studio, for reviews (its first start migrates its database while the retrain runs).
        deadline = time.monotonic() + 120
        while not is_running(f"http://127.0.0.1:{ops['label_studio_port']}"):
            assert time.monotonic() < deadline, (root / ".ops/logs/label-studio.log").read_text()[-3000:]
            time.sleep(1)
    finally:
        assert ctrl_c(proc) == 0
    assert all(port_is_free(ops[port]) for port in ("prefect_port", "evidently_port", "service_port",
                                                    "label_studio_port"))

    proc = start_ops(root, env)  # the same database: deployments and history are still there
    try:
        with temporary_settings(updates={PREFECT_API_URL: api}), get_client(sync_client=True) as client:
            assert client.read_deployment_by_name("retrain/retrain").id == deployment_id
            assert client.read_flow_run(run.id).state.is_completed()
    finally:
        assert ctrl_c(proc) == 0
    print(f"stack ready in {startup:.1f} s")


def ops_error(root: Path, monkeypatch, capsys, *args: str) -> str:
    """What `python -m flows.ops` prints when it refuses to start, run in this process (an interpreter
    start per case costs 14 s here); it must exit with status 2."""
    monkeypatch.chdir(root)
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}  # main() installs its own
    try:
        with pytest.raises(SystemExit) as exited:
            ops_main(list(args))
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    assert exited.value.code == 2
    return capsys.readouterr().err


def test_bad_operational_input_gets_one_line(tmp_path: Path, monkeypatch, capsys):
    root = tmp_path / "p"
    root.mkdir()
    raw = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    raw["ops"].update({"prefect_port": free_port(), "evidently_port": free_port(), "service_port": free_port(),
                       "label_studio_port": free_port()})

    def with_ops(**ops) -> None:
        (root / "params.yaml").write_text(yaml.safe_dump({**raw, "ops": {**raw["ops"], **ops}}, sort_keys=False))

    # The command line itself, once: one line on stderr, exit status 2.
    with_ops(retrain={**raw["ops"]["retrain"], "cron": "0 25 * * *"})
    done = subprocess.run([sys.executable, "-m", "flows.ops"], cwd=root, text=True, capture_output=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "ops.retrain.cron: invalid cron" in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr

    cases = [
        ({"retrain": {**raw["ops"]["retrain"], "cooldown_minutes": "6h"}}, (),
         "ops.retrain.cooldown_minutes: Input should be a valid integer"),
        ({}, ("--api-url", f"http://127.0.0.1:{free_port()}/api"), "cannot be reached"),
    ]
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        cases.append(({"prefect_port": busy.getsockname()[1]}, (), "is in use (ops.prefect_port)"))
        for ops, args, message in cases:
            with_ops(**ops)
            stderr = ops_error(root, monkeypatch, capsys, *args)
            assert stderr.startswith("ops: error: ") and message in stderr, stderr
            assert len(stderr.strip().splitlines()) == 1, stderr
