"""Optional access control: a bearer token that every request but the health checks must carry.

The token comes from the environment of `bentoml serve`, never from params.yaml or the Bento:
    IMAGE_CLASSIFIER_TOKEN        the token itself
    IMAGE_CLASSIFIER_TOKEN_FILE   a file holding it (e.g. a mounted secret); wins over the variable
Neither set: the service is open (it binds to 127.0.0.1 unless told otherwise). With a token, a
request without `Authorization: Bearer <token>` gets 401 and a JSON body; /livez, /readyz and
/healthz stay open for orchestrators. Tokens are compared in constant time and never logged.
"""
from __future__ import annotations

import hmac
import json
import os
from pathlib import Path

TOKEN_ENV = "IMAGE_CLASSIFIER_TOKEN"
TOKEN_FILE_ENV = "IMAGE_CLASSIFIER_TOKEN_FILE"
OPEN_PATHS = frozenset({"/livez", "/readyz", "/healthz"})


def configured_token() -> bytes | None:
    """The token the service requires, or None; a named token file that cannot be read is an error."""
    file = os.environ.get(TOKEN_FILE_ENV)
    if file:
        try:
            token = Path(file).expanduser().read_text().strip()
        except OSError as err:
            raise RuntimeError(f"{TOKEN_FILE_ENV}={file}: cannot read the token file ({err.strerror})") from None
        if not token:
            raise RuntimeError(f"{TOKEN_FILE_ENV}={file}: the token file is empty")
        return token.encode()
    token = os.environ.get(TOKEN_ENV, "").strip()
    return token.encode() if token else None


class BearerToken:
    """ASGI middleware: pass requests that carry the token (or go to a health check), answer 401 otherwise."""

    def __init__(self, app, token: bytes | None) -> None:
        self.app, self.token = app, token

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or self.token is None or scope["path"] in OPEN_PATHS or self.allowed(scope):
            await self.app(scope, receive, send)
            return
        body = json.dumps({"error": "unauthorized",
                           "detail": "send the service's token as 'Authorization: Bearer <token>'"}).encode()
        await send({"type": "http.response.start", "status": 401, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"www-authenticate", b'Bearer realm="image-classifier"')]})
        await send({"type": "http.response.body", "body": body})

    def allowed(self, scope) -> bool:
        header = next((value for name, value in scope["headers"] if name == b"authorization"), b"")
        scheme, _, given = header.partition(b" ")
        # compare_digest on every request, whatever was sent: the time taken says nothing about the token
        return hmac.compare_digest(given.strip(), self.token) and scheme.lower() == b"bearer"
