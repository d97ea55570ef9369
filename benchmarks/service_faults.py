"""Fault check: the model worker killed (or hung) under load. Every request must get 200 or 503 (with
Retry-After), none may take past the service's 60 s request timeout, and the service must recover alone.

Serves the working tree's service (`bentoml serve service.service:ImageClassifier` in the project
root, so the sources as they are now; or a built Bento with --bento) on 127.0.0.1, sends POST
/classify from --concurrency clients for --seconds, and --fault-at seconds in kills the model worker
(ClassifierModel's process, a child of the server) with SIGKILL; with --fault hang it stops it
instead (SIGSTOP: alive, its socket open, never answering) for --hang-for seconds, then lets it go
on (SIGCONT). A client refused with 503 waits its Retry-After, as a well-behaved one would.
Prints one JSON line:
    requests, ok, refused     all requests sent, the 200s, the 503s
    other                     any other status or connection failure, by kind (must be empty)
    max_latency_s             the slowest request, answered or not, against timeout_s (60 s);
                              over_timeout counts the requests past it (must be 0)
    in_flight_at_fault        statuses of the requests sent before the fault and answered after it
    recovery_s                from the fault to the first 200 of a request sent after it
    last_503_after_fault_s    from the fault to the end of the last 503
    old/new_worker_pid, worker_replaced, worker_back_s   the model worker's process before and after,
                              and when the new one was first seen
    retry_after_on_every_503, bodies_503   what the refusals said
Usage:
    python benchmarks/service_faults.py                        # production model, else the newest one
    python benchmarks/service_faults.py --model image-classifier:<version> --concurrency 16 --seconds 60
    python benchmarks/service_faults.py --bento image-classifier-service:<version>   # its own sources
    python benchmarks/service_faults.py --fault hang --seconds 90 --hang-for 45
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.serve_throughput import free_port, sample_pngs  # noqa: E402

BIN = Path(sys.executable).parent
MODEL_SERVICE = "ClassifierModel"
TIMEOUT_S = 60  # traffic={"timeout": 60} of both services in service/service.py


def model_worker(server_pid: int) -> psutil.Process | None:
    """The model worker: the server's child process started with `--service-name ClassifierModel`."""
    for child in psutil.Process(server_pid).children(recursive=True):
        try:
            if MODEL_SERVICE in child.cmdline():
                return child
        except psutil.Error:  # gone between the listing and the look
            continue
    return None


def serve(target: str, port: int, env: dict, log: Path) -> subprocess.Popen:
    """`bentoml serve <target>` in the project root on 127.0.0.1:port, once /readyz answers 200."""
    with log.open("w") as out:
        server = subprocess.Popen([str(BIN / "bentoml"), "serve", target, "--host", "127.0.0.1", "--port", str(port)],
                                  cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        if server.poll() is not None:
            raise SystemExit(f"bentoml serve {target} exited ({server.returncode}):\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    raise SystemExit(f"bentoml serve {target} was not ready within 180 s:\n{log.read_text()[-3000:]}")


async def post(session: aiohttp.ClientSession, url: str, png: bytes) -> dict:
    """One POST /classify: status (or the connection failure's name), Retry-After, latency, body."""
    form = aiohttp.FormData()
    form.add_field("images", png, filename="img.png", content_type="image/png")
    started = time.monotonic()
    answer = {"sent": started, "retry_after": None, "body": ""}
    try:
        async with session.post(f"{url}/classify", data=form) as response:
            body = await response.read()
            answer.update(status=response.status, retry_after=response.headers.get("Retry-After"),
                          body=body[:300].decode(errors="replace"))
    except (aiohttp.ClientError, asyncio.TimeoutError) as err:
        answer["status"] = type(err).__name__
    answer["done"] = time.monotonic()
    return answer


async def faulted_load(url: str, server_pid: int, pngs: list[bytes], concurrency: int, seconds: float,
                       fault_at: float, fault: str, hang_for: float) -> dict:
    """`concurrency` clients for `seconds`; at `fault_at` the model worker killed (or hung for `hang_for`
    seconds); every answer, and the worker's pids."""
    answers: list[dict] = []
    started = time.monotonic()
    end = started + seconds
    worker = {"old": model_worker(server_pid).pid}

    async def client(session: aiohttp.ClientSession, k: int) -> None:
        i = k
        while time.monotonic() < end:
            answer = await post(session, url, pngs[i % len(pngs)])
            answers.append(answer)
            i += concurrency
            if answer["status"] == 503:
                await asyncio.sleep(float(answer["retry_after"] or 0))

    async def make_fault() -> None:
        await asyncio.sleep(fault_at)
        os.kill(worker["old"], signal.SIGSTOP if fault == "hang" else signal.SIGKILL)
        worker["fault"] = time.monotonic()
        if fault == "hang":
            await asyncio.sleep(hang_for)
            os.kill(worker["old"], signal.SIGCONT)
            return
        while time.monotonic() < end:  # psutil's look costs a few ms: fine between two polls
            found = model_worker(server_pid)
            if found is not None and found.pid != worker["old"]:
                worker.update(new=found.pid, back=time.monotonic())
                return
            await asyncio.sleep(0.1)

    # Past the service's own timeout, so that a request it lets hang shows as one, not as a client timeout.
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_S + 30)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency), timeout=timeout) as session:
        await asyncio.gather(make_fault(), *(client(session, k) for k in range(concurrency)))
    return {"answers": answers, "worker": worker, "started": started}


def figures(run: dict) -> dict:
    answers, worker = run["answers"], run["worker"]
    faulted = worker["fault"]
    statuses = [a["status"] for a in answers]
    refused = [a for a in answers if a["status"] == 503]
    other: dict[str, int] = {}
    for status in statuses:
        if status not in (200, 503):
            other[str(status)] = other.get(str(status), 0) + 1
    in_flight: dict[str, int] = {}
    for a in answers:
        if a["sent"] < faulted <= a["done"]:
            in_flight[str(a["status"])] = in_flight.get(str(a["status"]), 0) + 1
    latencies = [a["done"] - a["sent"] for a in answers]
    first_ok = min((a["done"] for a in answers if a["status"] == 200 and a["sent"] >= faulted), default=None)
    last_503 = max((a["done"] for a in refused if a["done"] >= faulted), default=None)
    return {
        "requests": len(answers), "ok": statuses.count(200), "refused": len(refused),
        "other": other, "other_total": sum(other.values()),
        "max_latency_s": round(max(latencies), 2), "timeout_s": TIMEOUT_S,
        "over_timeout": sum(latency > TIMEOUT_S for latency in latencies),
        "fault_at_s": round(faulted - run["started"], 2),
        "in_flight_at_fault": in_flight,
        "recovery_s": None if first_ok is None else round(first_ok - faulted, 2),
        "last_503_after_fault_s": None if last_503 is None else round(last_503 - faulted, 2),
        "old_worker_pid": worker["old"], "new_worker_pid": worker.get("new"),
        "worker_replaced": worker.get("new") is not None,
        "worker_back_s": round(worker["back"] - faulted, 2) if "back" in worker else None,
        "retry_after_on_every_503": all(a["retry_after"] for a in refused),
        "bodies_503": sorted({a["body"] for a in refused})[:3],
        "bodies_other": sorted({a["body"] for a in answers if a["status"] not in (200, 503) and a["body"]})[:3],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python benchmarks/service_faults.py",
                                     description=__doc__.split("\n\n")[0])  # its summary takes two lines
    parser.add_argument("--bento", help="serve this built Bento (its own copy of the sources) instead of the working tree")
    parser.add_argument("--model", help="model tag for the working tree's service (default: production, else the newest)")
    parser.add_argument("--concurrency", type=int, default=8, help="clients sending requests at once")
    parser.add_argument("--seconds", type=float, default=30, help="how long the load lasts")
    parser.add_argument("--fault", choices=("kill", "hang"), default="kill",
                        help="kill: SIGKILL the model worker; hang: SIGSTOP it for --hang-for seconds")
    parser.add_argument("--fault-at", type=float, default=10, help="seconds into the load")
    parser.add_argument("--hang-for", type=float, default=45, help="--fault hang: seconds the worker stays stopped")
    parser.add_argument("--log", type=Path, help="keep the server's log in this file (default: thrown away)")
    args = parser.parse_args(argv)

    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "True"}
    env.pop("IMAGE_CLASSIFIER_MODEL", None)
    if args.model:
        env["IMAGE_CLASSIFIER_MODEL"] = args.model
    target = args.bento or "service.service:ImageClassifier"
    pngs = sample_pngs(256)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as scratch:
        env["IMAGE_CLASSIFIER_TRAFFIC_DIR"] = str(Path(scratch) / "traffic")
        log = args.log or Path(scratch) / "serve.log"
        server = serve(target, port, env, log)
        try:
            warm = httpx.post(f"{url}/classify", files=[("images", ("w.png", pngs[0], "image/png"))], timeout=60)
            if warm.status_code != 200:
                raise SystemExit(f"warm-up request got {warm.status_code}: {warm.text[:300]}")
            run = asyncio.run(faulted_load(url, server.pid, pngs, args.concurrency, args.seconds, args.fault_at,
                                           args.fault, args.hang_for))
            print(json.dumps({"served": target, "model": warm.json()["model"], "fault": args.fault,
                              "concurrency": args.concurrency, "seconds": args.seconds, **figures(run)}), flush=True)
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()


if __name__ == "__main__":
    main()
