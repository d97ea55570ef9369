"""The model worker lost under load, on a real `bentoml serve` of the packaged Bento: every request is
answered 200 or 503 with Retry-After, none waits to the 60 s timeout, and the service recovers alone.

benchmarks/service_faults.py measures the same faults with more load, for longer.
"""
from __future__ import annotations

import asyncio
import signal
import time
from dataclasses import dataclass
from urllib.parse import urlparse

import httpx
import psutil
import pytest

from tests.conftest import write_image_set
from tests.serving import bentoml_serve

pytestmark = [pytest.mark.serving,
              pytest.mark.slow(reason="a second `bentoml serve`, whose model worker is killed and restarted")]

TIMEOUT_S = 60  # traffic={"timeout": 60} in service/service.py
MODEL_WAIT_S = 20  # service/service.py: the longest wait for the model worker before 503
CLIENTS = 6


@pytest.fixture(scope="module")
def server(packaged: dict):
    """The packaged Bento served on its own, so that its faults touch no other test's server."""
    with bentoml_serve(packaged, {"IMAGE_CLASSIFIER_TRAFFIC_DIR": "traffic-faults"}, "serve-faults.log") as url:
        yield url


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> bytes:
    return write_image_set(tmp_path_factory.mktemp("faults"), {"cat": 1})[0].read_bytes()


def model_worker(url: str) -> psutil.Process | None:
    """ClassifierModel's process: a child of the `bentoml serve --port <port>` this test process started."""
    port = str(urlparse(url).port)
    for proc in psutil.Process().children(recursive=True):
        try:
            cmd = proc.cmdline()
            if "serve" in cmd and "--port" in cmd and cmd[cmd.index("--port") + 1] == port:
                return next((child for child in proc.children(recursive=True)
                             if "ClassifierModel" in child.cmdline()), None)
        except (psutil.Error, IndexError):  # gone meanwhile, or not ours
            continue
    return None


@dataclass
class Answer:
    sent: float
    done: float
    status: int | str  # the HTTP status, or the name of the client's error
    retry_after: str | None
    body: str


async def post(client: httpx.AsyncClient, url: str, image: bytes) -> Answer:
    sent = time.monotonic()
    try:
        response = await client.post(url + "/classify", files=[("images", ("cat.png", image, "image/png"))])
        return Answer(sent, time.monotonic(), response.status_code, response.headers.get("retry-after"),
                      response.text[:300])
    except httpx.HTTPError as err:
        return Answer(sent, time.monotonic(), type(err).__name__, None, str(err))


def classify(url: str, image: bytes) -> int:
    return httpx.post(url + "/classify", files=[("images", ("cat.png", image, "image/png"))], timeout=TIMEOUT_S).status_code


def check_answers(answers: list[Answer]) -> None:
    """200, or 503 with Retry-After and the one-line reason; each before the request timeout."""
    assert {a.status for a in answers} <= {200, 503}, [(a.status, a.body) for a in answers if a.status not in (200, 503)]
    assert max(a.done - a.sent for a in answers) < TIMEOUT_S
    for refused in (a for a in answers if a.status == 503):
        assert refused.retry_after == "1" and "model worker" in refused.body, refused


def test_a_killed_model_worker_costs_at_most_503s_and_is_replaced(server: str, image: bytes):
    old = model_worker(server)
    assert old is not None and classify(server, image) == 200

    async def faulted_load() -> tuple[list[Answer], float, float | None]:
        answers: list[Answer] = []
        stop = asyncio.Event()

        async def client_loop(client: httpx.AsyncClient) -> None:
            while not stop.is_set():
                answers.append(await post(client, server, image))
                if answers[-1].status == 503:  # as told: a well-behaved client
                    await asyncio.sleep(float(answers[-1].retry_after or 1))

        # The client waits past the service's timeout: a request the service let hang shows as one.
        async with httpx.AsyncClient(timeout=TIMEOUT_S + 10, limits=httpx.Limits(max_connections=CLIENTS)) as client:
            loops = [asyncio.create_task(client_loop(client)) for _ in range(CLIENTS)]
            await asyncio.sleep(1)  # the load going
            old.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            recovered = None
            while recovered is None and time.monotonic() - killed < TIMEOUT_S:
                await asyncio.sleep(0.2)
                recovered = min((a.done for a in answers if a.sent > killed and a.status == 200), default=None)
            stop.set()
            await asyncio.gather(*loops)
        return answers, killed, recovered

    answers, killed, recovered = asyncio.run(faulted_load())
    assert any(a.sent < killed < a.done for a in answers), "no request was in flight when the worker was killed"
    check_answers(answers)
    assert recovered is not None, f"no 200 within {TIMEOUT_S} s of the kill"
    new = model_worker(server)
    assert new is not None and new.pid != old.pid
    statuses = [a.status for a in answers]
    print(f"{len(answers)} requests: {statuses.count(200)} × 200, {statuses.count(503)} × 503; "
          f"200 again {recovered - killed:.1f} s after the kill")


def test_a_model_worker_that_does_not_answer_costs_503s_not_the_timeout(server: str, image: bytes):
    """Stopped (SIGSTOP), the model worker keeps its socket and never answers: 503 after MODEL_WAIT_S,
    where the service used to answer 504 at its 60 s timeout."""
    worker = model_worker(server)
    assert worker is not None

    async def burst() -> list[Answer]:
        async with httpx.AsyncClient(timeout=TIMEOUT_S + 10) as client:
            return await asyncio.gather(*(post(client, server, image) for _ in range(4)))

    worker.send_signal(signal.SIGSTOP)
    try:
        answers = asyncio.run(burst())
    finally:
        worker.send_signal(signal.SIGCONT)
    check_answers(answers)
    assert [a.status for a in answers] == [503] * 4
    assert max(a.done - a.sent for a in answers) < MODEL_WAIT_S + 5
    deadline = time.monotonic() + 30  # resumed, it answers again
    while (status := classify(server, image)) != 200 and time.monotonic() < deadline:
        time.sleep(1)
    assert status == 200
