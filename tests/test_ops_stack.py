"""The operations command itself: start the stack, retrain through the work pool's worker, stop with
Ctrl-C, start again and find everything where it was; and its one-line errors."""
from __future__ import annotations

import os
import secrets
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
from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

from flows.credentials import AUTH_ENV, AUTH_FILE_ENV, is_loopback, prefect_auth, stack_secrets
from flows.ops import main as ops_main
from service.access import TOKEN_ENV, TOKEN_FILE_ENV
from tasks.common.config import UserError
from tasks.common.paths import POINTER
from tasks.labels.studio import is_running
from tasks.model.registry import read_pointer
from tests.conftest import PROJECT_ROOT, free_port, prefect_cli
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


def listening_hosts(port: int) -> set[str]:
    """The local addresses on which something listens on this TCP port (Linux's /proc/net/tcp)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, port_hex = local.split(":")
            if state == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
                found.add("127.0.0.1" if address == "0100007F" else "any" if set(address) == {"0"} else address)
    return found


@pytest.mark.slow(reason="starts the whole stack twice and runs the pipeline through its worker")
def test_the_exposed_stack_requires_its_secrets_retrains_through_its_worker_stops_cleanly_and_resumes(tmp_path: Path):
    root = ops_project(tmp_path / "project", host="0.0.0.0")  # beyond loopback: every door needs its secret
    ops = yaml.safe_load((root / "params.yaml").read_text())["ops"]
    auth, token = f"ops:{secrets.token_urlsafe(12)}", secrets.token_urlsafe(16)
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml"), AUTH_ENV: auth, TOKEN_ENV: token}
    api = f"http://127.0.0.1:{ops['prefect_port']}/api"

    started = time.monotonic()
    proc = start_ops(root, env)
    startup = time.monotonic() - started
    try:
        assert httpx.post(f"{api}/deployments/filter", json={}).status_code == 401
        assert httpx.post(f"{api}/deployments/filter", json={}, auth=tuple(auth.split(":", 1))).status_code == 200
        assert prefect_cli(api, "deployment", "ls").returncode != 0
        listed = prefect_cli(api, "deployment", "ls", auth=auth)
        assert listed.returncode == 0 and "retrain/retrain" in listed.stdout, listed.stderr
        deadline = time.monotonic() + 60
        while not (evidently := listening_hosts(ops["evidently_port"])) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert evidently == {"127.0.0.1"}  # no login: loopback only
        assert listening_hosts(ops["prefect_port"]) == {"any"}

        with temporary_settings(updates={PREFECT_API_URL: api, PREFECT_API_AUTH_STRING: auth}):
            # The worker, holding the credentials, runs the retrain.
            run = run_deployment("retrain/retrain", parameters={"trigger": "manual"}, timeout=900)
            assert run.state.is_completed(), run.state.message
            with get_client(sync_client=True) as client:
                body = {"artifacts": {"key": {"any_": ["retrain-lineage"]}}, "sort": "CREATED_DESC",
                        "limit": 1, "offset": 0}
                (lineage,) = client.request("POST", "/artifacts/filter", json=body).json()
                deployment_id = client.read_deployment_by_name("retrain/retrain").id
        assert "| trigger | manual |" in lineage["data"] and "data_root_hash" in lineage["data"]
        with temporary_settings(updates={PREFECT_API_URL: api, PREFECT_API_AUTH_STRING: auth}):
            kept = run_deployment("housekeeping/housekeeping", timeout=300)  # through the worker too
        assert kept.state.is_completed(), kept.state.message
        assert (root / ".ops/logs/data-watcher.log").read_text().startswith("recorded 30 files under images")
        production = read_pointer(root / POINTER)["current"]
        assert production is not None  # no champion: the gate passed it
        # The stack starts the service once production has a model; it answers with that model.
        service = f"http://127.0.0.1:{ops['service_port']}"
        deadline = time.monotonic() + 120
        while not service_ready(service):
            assert time.monotonic() < deadline, (root / ".ops/logs/service.log").read_text()[-3000:]
            time.sleep(1)
        image = next((root / "images/cat").iterdir())
        upload = [("images", (image.name, image.read_bytes(), "image/png"))]
        assert httpx.post(service + "/classify", files=upload, timeout=30).status_code == 401
        answer = httpx.post(service + "/classify", files=upload, timeout=30, headers={"Authorization": f"Bearer {token}"})
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
        with temporary_settings(updates={PREFECT_API_URL: api, PREFECT_API_AUTH_STRING: auth}), \
                get_client(sync_client=True) as client:
            assert client.read_deployment_by_name("retrain/retrain").id == deployment_id
            assert client.read_flow_run(run.id).state.is_completed()
    finally:
        assert ctrl_c(proc) == 0
    leaked = [str(path) for path in (root / ".ops").rglob("*.log") if path.is_file()
              and any(secret in path.read_text(errors="replace") for secret in (auth.split(":", 1)[1], token))]
    assert leaked == [], f"a secret is in {leaked}"
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


def test_beyond_loopback_the_stack_refuses_to_start_without_its_secrets(tmp_path: Path, monkeypatch, capsys):
    for name in (AUTH_ENV, AUTH_FILE_ENV, TOKEN_ENV, TOKEN_FILE_ENV):
        monkeypatch.delenv(name, raising=False)
    root = tmp_path / "p"
    root.mkdir()
    raw = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    raw["ops"].update({"host": "0.0.0.0", "prefect_port": free_port(), "evidently_port": free_port(),
                       "service_port": free_port(), "label_studio_port": free_port()})
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))

    stderr = ops_error(root, monkeypatch, capsys)
    assert stderr.startswith("ops: error: ops.host 0.0.0.0 is reachable from other machines, so the stack needs "
                             f"the Prefect API's basic auth ({AUTH_ENV}=user:password") and TOKEN_ENV in stderr, stderr
    assert len(stderr.strip().splitlines()) == 1

    monkeypatch.setenv(AUTH_ENV, "ops:s3cret")  # one of the two is not enough
    stderr = ops_error(root, monkeypatch, capsys)
    assert "the service's bearer token" in stderr and "basic auth" not in stderr and "s3cret" not in stderr


def test_what_counts_as_loopback_and_where_the_auth_string_comes_from(tmp_path: Path):
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.20")
    assert stack_secrets("127.0.0.1", True, {}) == {}  # loopback: nothing required
    assert stack_secrets("127.0.0.1", True, {AUTH_ENV: "a:b"}) == {AUTH_ENV: "a:b", "PREFECT_SERVER_API_AUTH_STRING": "a:b"}
    assert stack_secrets("127.0.0.1", False, {AUTH_ENV: "a:b"}) == {AUTH_ENV: "a:b"}  # a server elsewhere checks it

    secret = tmp_path / "prefect-auth"
    secret.write_text("ops:from-file\n")
    assert prefect_auth({AUTH_FILE_ENV: str(secret), AUTH_ENV: "ops:from-env"}) == "ops:from-file"
    for env, message in [({AUTH_ENV: "no-colon"}, "must hold user:password"),
                         ({AUTH_FILE_ENV: str(tmp_path / "absent")}, "cannot read it")]:
        with pytest.raises(UserError, match=message):
            prefect_auth(env)
