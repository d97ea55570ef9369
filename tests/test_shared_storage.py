"""Two machines sharing one DVC remote over real SSH: what one computed and promoted, the other pulls,
finds up to date, and serves, without training or a hand-run import.

The SSH server is OpenSSH's sshd from Debian (`apt-get install openssh-server`; .ci/run installs it)
on a free loopback port, with a host key and a user key made for the test; the DVC remote is
`ssh://` through dvc-ssh, checking the server against a known_hosts file that holds that host key.
"""
from __future__ import annotations

import contextlib
import getpass
import io
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tasks.common.paths import POINTER
from tasks.model.registry import archive_path, read_pointer
from tests.conftest import PROJECT_ROOT, free_port
from tests.projects import Trained, copy_trained, under_git
from tests.serving import production_serve

pytestmark = [pytest.mark.ops,
              pytest.mark.slow(reason="pushes and pulls over SSH, then serves on a second machine")]
SSHD = Path("/usr/sbin/sshd")


@pytest.fixture
def ssh_server(tmp_path: Path):
    """sshd on 127.0.0.1:<free port> accepting only a throwaway key; yields (port, key, home) where
    `home` is a HOME whose ~/.ssh/known_hosts pins the server's host key."""
    if not SSHD.is_file():
        pytest.skip(f"{SSHD} not found: sudo apt-get install openssh-server (.ci/run installs it)")
    keys = tmp_path / "ssh"
    keys.mkdir()
    for name in ("host_key", "user_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / name)], check=True)
    shutil.copy(keys / "user_key.pub", keys / "authorized_keys")
    port = free_port()
    (keys / "sshd_config").write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {keys / 'host_key'}", f"PidFile {keys / 'sshd.pid'}",
        f"AuthorizedKeysFile {keys / 'authorized_keys'}", "PubkeyAuthentication yes",
        "PasswordAuthentication no", "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no",
        f"AllowUsers {getpass.getuser()}", "PermitRootLogin prohibit-password", "Subsystem sftp internal-sftp", ""]))
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation folder
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    host_key = (keys / "host_key.pub").read_text().split()[:2]
    (home / ".ssh" / "known_hosts").write_text(f"[127.0.0.1]:{port} {' '.join(host_key)}\n")
    log = (keys / "sshd.log").open("w")
    server = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(keys / "sshd_config")], stdout=log,
                              stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 20
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if server.poll() is not None or time.time() > deadline:
                pytest.fail(f"sshd did not start:\n{(keys / 'sshd.log').read_text()}")
            time.sleep(0.1)
        yield port, keys / "user_key", home
    finally:
        server.terminate()
        server.wait(10)
        log.close()


def machine_env(home: Path, store: Path) -> dict:
    """One machine: its own HOME (SSH's known_hosts) and its own BentoML store."""
    return {**os.environ, "HOME": str(home), "BENTOML_HOME": str(store), "BENTOML_DO_NOT_TRACK": "True",
            "PYTHONPATH": str(PROJECT_ROOT), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def run(cmd: list[str], cwd: Path, env: dict, timeout: int = 600) -> str:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def dvc(*args: str) -> list[str]:
    return [sys.executable, "-m", "dvc", *args]


def first_machine(trained: Trained, root: Path, remote_url: str, key: Path) -> Trained:
    """The trained project (its flow ran, promoted) as a git + DVC project, its data.root `dvc add`-ed,
    its default remote over SSH."""
    machine = copy_trained(trained, root)
    repo = under_git(machine.repo)
    subprocess.run(dvc("add", "-q", "images"), cwd=repo, check=True)  # the user's dvc add-ed data.root
    subprocess.run(dvc("remote", "modify", "storage", "url", remote_url), cwd=repo, check=True)
    subprocess.run(dvc("remote", "modify", "--local", "storage", "keyfile", str(key)), cwd=repo, check=True)
    return machine


def commit(root: Path, message: str) -> None:
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@localhost", "commit", "-qm", message],
                   cwd=root, check=True)


def test_a_second_machine_pulls_over_ssh_finds_everything_up_to_date_and_serves_production(trained, tmp_path,
                                                                                            ssh_server):
    port, key, home = ssh_server
    remote_dir = tmp_path / "remote"
    remote_url = f"ssh://{getpass.getuser()}@127.0.0.1:{port}{remote_dir}"

    # Machine A ran the pipeline and promoted (the shared trained project); it re-checks the gate against
    # the new champion, finds the promotion done, pushes.
    machine_a = first_machine(trained, tmp_path / "a", remote_url, key)
    a, env_a = machine_a.repo, machine_env(home, machine_a.bentoml_home)
    run(dvc("repro"), a, env_a)  # only the gate: "already in production"
    run([sys.executable, "-m", "tasks.production", "promote"], a, env_a)
    production = read_pointer(a / POINTER)["current"]
    assert (a / archive_path(production["model"])).is_file() and (a / "deploy/store.dvc").is_file()
    assert "Data and pipelines are up to date." in run(dvc("status"), a, env_a)
    commit(a, "pipeline run and promotion")
    run(dvc("push"), a, env_a)
    assert any(remote_dir.rglob("*.dir")), "nothing reached the SSH remote"

    # Machine B: a clone, its own empty BentoML store, only git and dvc pull.
    b = tmp_path / "b"
    subprocess.run(["git", "clone", "-q", str(a), str(b)], check=True)
    env_b = machine_env(home, tmp_path / "store-b")
    subprocess.run(dvc("remote", "modify", "--local", "storage", "keyfile", str(key)), cwd=b, check=True)
    run(dvc("pull"), b, env_b)
    status = run(dvc("status"), b, env_b)
    assert "Data and pipelines are up to date." in status, status
    assert (b / "models/model.safetensors").is_file() and (b / archive_path(production["model"])).is_file()

    shown = run([sys.executable, "-m", "tasks.production", "show"], b, env_b)
    assert f"production: {production['model']}" in shown and "lineage:       unknown" not in shown, shown
    with production_serve(b, env_b) as url:
        image = io.BytesIO()
        Image.open(next((b / "images/cat").glob("*.png"))).save(image, "PNG")
        answer = httpx.post(url + "/classify", files={"images": ("cat.png", image.getvalue(), "image/png")}, timeout=60)
        assert answer.status_code == 200, answer.text
        assert answer.json()["model"] == production["model"]

