"""Serving throughput: the model in-process against the real served Bento on loopback, per runtime.

For the production Bento (or --bento), and for each of --runtimes (packaged: the runtime the model
was packaged with, tasks/model/served.py; torch: its PyTorch weights, IMAGE_CLASSIFIER_RUNTIME=torch),
times:
    in_process  the model alone, preprocessing included (PNG bytes -> decode -> RGB -> array ->
                calibrated probabilities and embedding): batches of 64, and one image at a time
    served      `bentoml serve <bento>` on 127.0.0.1, POST /classify from an asyncio client at each
                --concurrency, with each --images-per-request: requests/s, images/s, p50/p95/p99
                latency, errors (any non-200 or connection failure), and the server's memory (all
                its processes: RSS summed, and PSS, which counts shared pages once) before and after
and prints one JSON line per case. The client runs on the same machine as the server and takes some
of its CPU: on a small machine the served figures are a lower bound. Usage:
    python benchmarks/serve_throughput.py                       # production Bento, 2,000 requests per case
    python benchmarks/serve_throughput.py --requests 10000 --concurrency 64 --images-per-request 1
"""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import httpx
import numpy as np
import pandas as pd
import psutil
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import bentoml  # noqa: E402

from service.admission import MAX_IN_FLIGHT_ENV  # noqa: E402
from tasks.common.paths import POINTER, split_csv  # noqa: E402
from tasks.data.images import decode_upload, to_rgb  # noqa: E402
from service.settings import RUNTIME_ENV  # noqa: E402
from tasks.model.registry import model_dir, read_pointer  # noqa: E402
from tasks.model.served import load_classifier  # noqa: E402

BIN = Path(sys.executable).parent


def sample_pngs(count: int) -> list[bytes]:
    """PNG bytes of test-split images (cycled to `count`), else of random 32 px images."""
    csv = split_csv("test")
    if csv.is_file():
        files = pd.read_csv(csv)["file"].tolist()
        blobs = [Path(f).read_bytes() for f in files[:count]]
    else:
        rng = np.random.default_rng(0)
        blobs = []
        for _ in range(min(count, 256)):
            out = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(out, format="PNG")
            blobs.append(out.getvalue())
    return [blobs[i % len(blobs)] for i in range(count)]


def in_process(model_path: Path, runtime: str, pngs: list[bytes], batch: int) -> dict:
    """Images/s of the model alone, batch by batch, decoding and preprocessing included."""
    classifier = load_classifier(model_path, runtime="torch" if runtime == "torch" else None)
    background = tuple(classifier.meta["background"])

    def classify(blobs: list[bytes]) -> np.ndarray:
        """What the service computes for each image, less the HTTP hops and the traffic log."""
        rgb = [to_rgb(decode_upload(b), background) for b in blobs]
        return np.concatenate(classifier.predict(classifier.preprocess(rgb)), axis=1)

    classify(pngs[:batch])  # warm-up
    started = time.perf_counter()
    for start in range(0, len(pngs), batch):
        classify(pngs[start:start + batch])
    seconds = time.perf_counter() - started
    return {"case": "in_process", "runtime": classifier.runtime, "batch": batch, "images": len(pngs),
            "images_per_s": round(len(pngs) / seconds, 1)}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def server_memory_mb(server: subprocess.Popen) -> dict:
    """Memory of the server and every process it started (API and model workers): RSS summed (shared
    libraries counted once per process) and PSS (each shared page split between its processes)."""
    root = psutil.Process(server.pid)
    rss = pss = 0
    for proc in [root, *root.children(recursive=True)]:
        try:
            info = proc.memory_full_info()
        except psutil.Error:
            continue
        rss, pss = rss + info.rss, pss + info.pss
    return {"rss_mb": round(rss / 2**20, 1), "pss_mb": round(pss / 2**20, 1)}


async def load(url: str, pngs: list[bytes], requests: int, concurrency: int, per_request: int) -> dict:
    """`requests` POSTs, `concurrency` at a time; latencies of the answered ones, and the failures.

    A client refused with Retry-After (503 under overload) waits that long before its next request.

    aiohttp, not httpx: at 64 concurrent, httpx's client took two thirds of a core on this machine
    and halved the rate the server could show; aiohttp takes under a tenth.
    """
    latencies, errors, statuses = [], 0, {}
    queue = iter(range(requests))

    async def client_loop(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        for i in queue:
            form = aiohttp.FormData()
            for k in range(per_request):
                form.add_field("images", pngs[(i * per_request + k) % len(pngs)], filename=f"img{i}_{k}.png",
                               content_type="image/png")
            started = time.perf_counter()
            retry_after = 0.0
            try:
                async with session.post(f"{url}/classify", data=form) as response:
                    await response.read()
                    status = response.status
                    retry_after = float(response.headers.get("Retry-After", 0))
            except (aiohttp.ClientError, asyncio.TimeoutError) as err:
                status = type(err).__name__
            if status == 200:
                latencies.append(time.perf_counter() - started)
            else:
                errors += 1
                statuses[str(status)] = statuses.get(str(status), 0) + 1
                await asyncio.sleep(retry_after)  # a refused client waits as told, as a well-behaved one would

    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency), timeout=timeout) as session:
        started = time.perf_counter()
        await asyncio.gather(*(client_loop(session) for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    ms = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    return {
        "requests": requests, "seconds": round(seconds, 2),
        "requests_per_s": round(len(latencies) / seconds, 1),
        "images_per_s": round(len(latencies) * per_request / seconds, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 1), "p95_ms": round(float(np.percentile(ms, 95)), 1),
        "p99_ms": round(float(np.percentile(ms, 99)), 1), "errors": errors, "error_statuses": statuses,
    }


def serve(bento: str, runtime: str, port: int, traffic_dir: str, max_in_flight: int | None = None) -> subprocess.Popen:
    env = {**os.environ, "IMAGE_CLASSIFIER_TRAFFIC_DIR": traffic_dir, "BENTOML_DO_NOT_TRACK": "True"}
    env.pop(RUNTIME_ENV, None)
    if runtime == "torch":
        env[RUNTIME_ENV] = "torch"
    if max_in_flight:
        env[MAX_IN_FLIGHT_ENV] = str(max_in_flight)
    server = subprocess.Popen([str(BIN / "bentoml"), "serve", bento, "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        if server.poll() is not None:
            raise SystemExit(f"bentoml serve {bento} exited ({server.returncode})")
        time.sleep(0.5)
    raise SystemExit(f"bentoml serve {bento} was not ready within 120 s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python benchmarks/serve_throughput.py", description=__doc__.split("\n")[0])
    parser.add_argument("--bento", help="Bento tag (default: the production Bento of deploy/production.json)")
    parser.add_argument("--requests", type=int, default=2000, help="requests per served case")
    parser.add_argument("--concurrency", default="1,16,64", help="requests in flight from the client, comma-separated")
    parser.add_argument("--images-per-request", default="1,16", help="comma-separated")
    parser.add_argument("--in-process-images", type=int, default=2048, help="images of each in-process case")
    parser.add_argument("--max-in-flight", type=int,
                        help="the server's IMAGE_CLASSIFIER_MAX_IN_FLIGHT (per API worker), to show refusals")
    parser.add_argument("--skip-in-process", action="store_true", help="only the served cases")
    parser.add_argument("--runtimes", default="packaged,torch", help="packaged (as packaged), torch (forced)")
    args = parser.parse_args(argv)

    entry = read_pointer(Path(POINTER))["current"]
    bento = args.bento or (entry and entry["bento"])
    if not bento:
        raise SystemExit("no production Bento: run the pipeline (make run) or pass --bento")
    model = str(bentoml.get(bento).info.all_models[0].tag)
    pngs = sample_pngs(max(args.in_process_images, 256))
    for runtime in args.runtimes.split(","):
        for batch in () if args.skip_in_process else (64, 1):
            print(json.dumps({"model": model, **in_process(model_dir(model), runtime, pngs[:args.in_process_images],
                                                            batch)}), flush=True)
        served(bento, runtime, pngs, args)


def served(bento: str, runtime: str, pngs: list[bytes], args: argparse.Namespace) -> None:
    port = free_port()
    with tempfile.TemporaryDirectory() as traffic:
        server = serve(bento, runtime, port, traffic, args.max_in_flight)
        try:
            for per_request in (int(n) for n in args.images_per_request.split(",")):
                for concurrency in (int(c) for c in args.concurrency.split(",")):
                    before = server_memory_mb(server)
                    figures = asyncio.run(load(f"http://127.0.0.1:{port}", pngs, args.requests, concurrency,
                                               per_request))
                    after = server_memory_mb(server)
                    print(json.dumps({"case": "served", "bento": bento, "runtime": runtime,
                                      "concurrency": concurrency, "max_in_flight": args.max_in_flight,
                                      "images_per_request": per_request, **figures,
                                      "server_rss_mb_before": before["rss_mb"], "server_rss_mb_after": after["rss_mb"],
                                      "server_pss_mb_before": before["pss_mb"],
                                      "server_pss_mb_after": after["pss_mb"]}), flush=True)
        finally:
            os.killpg(server.pid, 15)
            server.wait(30)


if __name__ == "__main__":
    main()
