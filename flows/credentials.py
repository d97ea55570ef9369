"""What the operations stack requires before any part of it listens beyond loopback.

On loopback (ops.host 127.0.0.1, the default) only this machine reaches the stack. On any other
address, the command refuses to start unless it has:
    Prefect API    basic auth: PREFECT_API_AUTH_STRING=user:password, or IMGCLF_PREFECT_AUTH_FILE naming a
                   file that holds it. The server requires it (PREFECT_SERVER_API_AUTH_STRING); the
                   worker, the flows and the CLI send it.
    service        its bearer token: IMAGE_CLASSIFIER_TOKEN, or IMAGE_CLASSIFIER_TOKEN_FILE (service/access.py)
Label Studio always requires its login. The Evidently UI has none, so it stays on 127.0.0.1.
Secrets come from the environment or from files outside git, never from params.yaml, and are never printed.
"""
from __future__ import annotations

import ipaddress
import socket
from collections.abc import Mapping
from pathlib import Path

from service.access import TOKEN_ENV, TOKEN_FILE_ENV, configured_token
from tasks.common.config import UserError

AUTH_ENV = "PREFECT_API_AUTH_STRING"
AUTH_FILE_ENV = "IMGCLF_PREFECT_AUTH_FILE"
SERVER_AUTH_ENV = "PREFECT_SERVER_API_AUTH_STRING"
LOOPBACK = "127.0.0.1"


def is_loopback(host: str) -> bool:
    """Whether every address the host name stands for is a loopback address (0.0.0.0 is every address)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except socket.gaierror:
        raise UserError(f"ops.host {host} is not an address or a name this machine resolves") from None
    return all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)


def prefect_auth(env: Mapping[str, str]) -> str | None:
    """The Prefect API's user:password from the file named by IMGCLF_PREFECT_AUTH_FILE, else from
    PREFECT_API_AUTH_STRING; None when neither is set."""
    if file := env.get(AUTH_FILE_ENV):
        try:
            value = Path(file).read_text().strip()
        except OSError as err:
            raise UserError(f"{AUTH_FILE_ENV}={file}: cannot read it ({err.strerror})") from None
        source = f"the file {file} ({AUTH_FILE_ENV})"
    else:
        value, source = env.get(AUTH_ENV, "").strip(), AUTH_ENV
    if not value:
        return None
    if ":" not in value:
        raise UserError(f"{source} must hold user:password for the Prefect API's basic auth")
    return value


def service_token_set() -> bool:
    try:
        return configured_token() is not None
    except RuntimeError as err:  # an unreadable or empty token file
        raise UserError(str(err)) from None


def stack_secrets(host: str, own_server: bool, env: Mapping[str, str]) -> dict[str, str]:
    """Environment entries that hand the credentials to the stack's processes; refuses, in one line,
    a stack that would listen beyond loopback without them."""
    auth = prefect_auth(env)
    if not is_loopback(host):
        missing = ([] if auth else [f"the Prefect API's basic auth ({AUTH_ENV}=user:password or {AUTH_FILE_ENV}=file)"]) \
            + ([] if service_token_set() else [f"the service's bearer token ({TOKEN_ENV} or {TOKEN_FILE_ENV}=file)"])
        if missing:
            raise UserError(f"ops.host {host} is reachable from other machines, so the stack needs "
                            f"{' and '.join(missing)} in the environment (never in params.yaml); or use "
                            f"ops.host: {LOOPBACK}")
    if auth is None:
        return {}
    return {AUTH_ENV: auth, **({SERVER_AUTH_ENV: auth} if own_server else {})}


def evidently_host(host: str) -> str:
    """The Evidently UI has no login: beyond loopback it stays on 127.0.0.1 (an SSH tunnel reaches it)."""
    return host if is_loopback(host) else LOOPBACK
