"""Label Studio for human review: its own environment, its credentials, and a server on loopback.

Label Studio cannot live in the project's environment (it would downgrade numpy and pull Django and
cloud SDKs), so `ensure_environment` makes one of its own on first use, outside the repository so
that every clone on the machine shares it. The server keeps its SQLite database, media and log under
a home folder (`<ops.home>/label-studio`), serves the images under one document root through
`/data/local-files/?d=<relative path>`, and is started with an admin user whose API token works
as `Authorization: Token <key>` (studio_client.py talks to it through that token).
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import httpx
from filelock import FileLock

from tasks.common.config import UserError

VERSION = "1.23.2"  # the newest label-studio on PyPI; installs cleanly on Python 3.11
ENV_VAR = "LABEL_STUDIO_ENV"
MARKER = ".installed"
START_SECONDS = 300  # the first start migrates a new database: ~40 s on 2 cores


def environment_dir() -> Path:
    """Where Label Studio's environment lives: $LABEL_STUDIO_ENV, else one per version in the user's cache."""
    chosen = os.environ.get(ENV_VAR)
    return Path(chosen).expanduser() if chosen else Path.home() / ".cache/imgclf-pipeline" / f"label-studio-{VERSION}"


def ensure_environment() -> Path:
    """The `label-studio` program, installed from PyPI into its own venv on first use.

    The marker is written only after pip succeeds; a folder without it is an interrupted install
    (pip may have left half-written packages), which is removed and redone. A lock keeps two
    processes from installing at once.
    """
    env = environment_dir()
    program, log = env / "bin" / "label-studio", env / "install.log"
    if (env / MARKER).exists():
        return program
    env.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(env) + ".lock"):
        if (env / MARKER).exists():
            return program
        if env.exists() and any(env.iterdir()):
            if not log.exists():  # never delete a folder this code did not make
                raise UserError(f"{env} is not a Label Studio environment made by this project: point {ENV_VAR} at "
                                f"a missing or empty folder (or write {VERSION} into {env / MARKER} if it has "
                                f"label-studio=={VERSION})")
            shutil.rmtree(env)
        print(f"label studio: installing label-studio=={VERSION} into {env} (first use, about 2 min)", flush=True)
        env.mkdir()
        with log.open("wb") as out:
            # The interpreter running the project is Python 3.11 (pyproject.toml); venv uses its base install.
            done = subprocess.run([sys.executable, "-m", "venv", str(env)], stdout=out, stderr=subprocess.STDOUT)
            if done.returncode == 0:
                done = subprocess.run([str(env / "bin" / "python"), "-m", "pip", "install", "--progress-bar", "off",
                                       "--disable-pip-version-check", f"label-studio=={VERSION}"],
                                      stdout=out, stderr=subprocess.STDOUT)
        if done.returncode != 0:
            raise UserError(f"installing label-studio=={VERSION} into {env} failed (exit {done.returncode}); "
                            f"see {log}, fix the cause (network, disk) and run again")
        (env / MARKER).write_text(VERSION + "\n")
    return program


@dataclass(frozen=True)
class Credentials:
    """The admin user Label Studio is started with; the secrets never appear in a repr or a log."""
    username: str  # Label Studio logs in by email
    password: str = field(repr=False)
    api_key: str = field(repr=False)


def credentials(home: Path) -> Credentials:
    """LABEL_STUDIO_USERNAME / _PASSWORD / _API_KEY where set, else <home>/credentials.json, which is
    written (mode 0600, random secrets) the first time it is needed."""
    env = {k: os.environ.get(f"LABEL_STUDIO_{k.upper()}") for k in ("username", "password", "api_key")}
    path = Path(home) / "credentials.json"
    stored = {} if all(env.values()) else _stored_credentials(path)
    missing = [k for k in env if not (env[k] or stored.get(k))]
    if missing:
        raise UserError(f"{path} lacks {', '.join(missing)}: "
                        f"add it there or set LABEL_STUDIO_{missing[0].upper()}")
    found = Credentials(**{k: env[k] or stored[k] for k in env})
    if "@" not in found.username:
        raise UserError(f"the Label Studio username {found.username!r} must be an email address "
                        "(set LABEL_STUDIO_USERNAME to one)")
    if not 5 < len(found.api_key) <= 40:  # Label Studio ignores shorter keys; its token column holds 40
        raise UserError("the Label Studio API key must have 6 to 40 characters (set LABEL_STUDIO_API_KEY to one)")
    return found


def _stored_credentials(path: Path) -> dict[str, str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fresh = {"username": "admin@localhost", "password": secrets.token_urlsafe(18), "api_key": secrets.token_hex(20)}
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise UserError(f"cannot read Label Studio credentials from {path} ({err}): fix the file, "
                            "or set LABEL_STUDIO_USERNAME, _PASSWORD and _API_KEY") from None
    with os.fdopen(fd, "w") as out:
        json.dump(fresh, out, indent=2)
    return fresh


def server_environment(home: Path, document_root: Path, creds: Credentials) -> dict[str, str]:
    """The process environment of the server: data under home, the admin user, local files, no telemetry."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "DJANGO_SETTINGS_MODULE")}
    env.update({
        "LABEL_STUDIO_BASE_DATA_DIR": str(home),  # SQLite database, media, exports
        "LABEL_STUDIO_USERNAME": creds.username,
        "LABEL_STUDIO_PASSWORD": creds.password,
        "LABEL_STUDIO_USER_TOKEN": creds.api_key,  # applied only when the user is first created
        # Label Studio 1.23 gives a new organization JWT personal access tokens only, unless this is set when
        # the organization is created (first start); else `Token <key>` gets 401 "legacy token ... disabled".
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(document_root),
        # Reviewers join through the organization's invite link, not an open sign-up page.
        "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
        # Offline: no error reports to Sentry, no usage analytics, no PyPI version check.
        "SENTRY_DSN": "", "FRONTEND_SENTRY_DSN": "", "COLLECT_ANALYTICS": "false", "LATEST_VERSION_CHECK": "false",
    })
    return env


def server_command(program: Path, host: str, port: int) -> list[str]:
    """The command line of a Label Studio on host:port (`--host` is the URL its pages link to)."""
    return [str(program), "start", "--no-browser", "--host", f"http://{host}:{port}", "--internal-host", host,
            "--port", str(port)]


@dataclass
class Server:
    """A started Label Studio: where it answers, its home (database, credentials, log), what it serves."""
    url: str
    home: Path
    document_root: Path
    log: Path
    process: subprocess.Popen


def is_running(url: str) -> bool:
    """Whether a Label Studio answers its health check at url."""
    try:
        reply = httpx.get(f"{url.rstrip('/')}/health", timeout=3)
        return reply.status_code == 200 and reply.json().get("status") == "UP"
    except (httpx.HTTPError, ValueError, AttributeError):
        return False


def start(home: Path, document_root: Path, host: str = "127.0.0.1", port: int = 8080,
          seconds: float = START_SECONDS) -> Server:
    """Label Studio serving document_root, with its data and log under home; returns once it answers."""
    home, document_root = Path(home).resolve(), Path(document_root).resolve()
    if not document_root.is_dir():
        raise UserError(f"the Label Studio document root {document_root} is not a folder")
    with socket.socket() as probe:  # Label Studio itself would silently move to the next free port
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            raise UserError(f"port {port} on {host} is in use: stop what listens there or pick another port") from None
    program = ensure_environment()
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    env = server_environment(home, document_root, credentials(home))
    url, log = f"http://{host}:{port}", home / "label-studio.log"
    with log.open("ab") as out:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(server_command(program, host, port), env=env, stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    server = Server(url, home, document_root, log, process)
    deadline = time.monotonic() + seconds
    try:  # in its own session, Ctrl-C would not reach it: whatever stops the wait stops the server
        while not is_running(url):
            if process.poll() is not None:
                raise UserError(f"Label Studio stopped while starting (exit {process.returncode}); see {log}")
            if time.monotonic() > deadline:
                raise UserError(f"Label Studio did not answer at {url} within {seconds:.0f} s; see {log}")
            time.sleep(0.5)
    except BaseException:
        stop(server)
        raise
    return server


def stop(server: Server, seconds: float = 20) -> None:
    """SIGTERM to the server's process group, SIGKILL if it is still there after `seconds`."""
    for sig, wait in ((signal.SIGTERM, seconds), (signal.SIGKILL, 5)):
        if server.process.poll() is not None:
            return
        try:
            os.killpg(server.process.pid, sig)
            server.process.wait(wait)
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


@contextmanager
def running(home: Path, document_root: Path, host: str = "127.0.0.1", port: int = 8080) -> Iterator[Server]:
    """A Label Studio for the duration of a with-block, stopped however the block ends."""
    server = start(home, document_root, host, port)
    try:
        yield server
    finally:
        stop(server)
