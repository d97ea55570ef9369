"""The service's optional bearer token, on a real ASGI app: who gets through, and what the rest get."""
from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from service.access import TOKEN_ENV, TOKEN_FILE_ENV, BearerToken, configured_token

pytestmark = pytest.mark.serving


async def hello(scope, receive, send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})


def get(token: bytes | None, path: str, headers: dict | None = None) -> httpx.Response:
    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=BearerToken(hello, token=token))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.post(path, headers=headers or {})
    return asyncio.run(call())


def test_without_a_token_everything_is_open():
    assert get(None, "/classify").status_code == 200


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"},
                                     {"Authorization": "s3cret"}, {"Authorization": "Bearer s3cret-and-more"}])
def test_a_request_without_the_right_token_gets_401_json(headers: dict):
    response = get(b"s3cret", "/classify", headers)
    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized" and "Bearer" in response.json()["detail"]
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert "s3cret" not in response.text


def test_the_right_token_passes_and_health_checks_stay_open():
    assert get(b"s3cret", "/classify", {"Authorization": "Bearer s3cret"}).status_code == 200
    assert get(b"s3cret", "/classify", {"authorization": "bearer s3cret"}).status_code == 200
    for path in ("/livez", "/readyz", "/healthz"):
        assert get(b"s3cret", path).status_code == 200
    assert get(b"s3cret", "/metrics").status_code == 401


def test_the_token_comes_from_a_file_or_the_environment(tmp_path: Path, monkeypatch):
    monkeypatch.delenv(TOKEN_FILE_ENV, raising=False)
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    assert configured_token() is None
    monkeypatch.setenv(TOKEN_ENV, " from-env \n")
    assert configured_token() == b"from-env"
    (tmp_path / "token").write_text("from-file\n")
    monkeypatch.setenv(TOKEN_FILE_ENV, str(tmp_path / "token"))
    assert configured_token() == b"from-file"  # the file wins
    (tmp_path / "token").write_text("\n")
    with pytest.raises(RuntimeError, match="empty"):
        configured_token()
    monkeypatch.setenv(TOKEN_FILE_ENV, str(tmp_path / "missing"))
    with pytest.raises(RuntimeError, match="cannot read the token file"):
        configured_token()
