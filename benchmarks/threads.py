"""Sharing the cores: a training's rate alone, beside a second training, beside monitor runs and
beside a loaded service.

Each training is the train stage itself (`python -m tasks.train`) in a scratch folder over this
project's split and cleaned images, every epoch run; its rate is reports/train/summary.json's
train_img_s (epochs after the first). Beside it, until it ends:
    two_trainings    the same training in a second process (both rates are printed)
    beside_monitor   the monitor stage (`python -m tasks.monitor`, ONNX Runtime), run after run
    beside_service   `bentoml serve` of the production Bento, classifying test images from
                     --clients client threads in this process, one image a request
and prints one JSON line per case, with the rate as a share of the training's rate alone. Needs
`make run` first (the split, the cleaned images, the model, its runtime and the production Bento).
--code runs the trainings and the monitor stage from another checkout of the project (an earlier
commit, to compare); the service always comes from the production Bento. Usage:
    python benchmarks/threads.py
    python benchmarks/threads.py --code /tmp/previous --cases alone beside_monitor
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pandas as pd
import yaml

# As the shell gave it: importing tasks (below) sets OMP_WAIT_POLICY, which an earlier checkout did not.
SHELL_ENV = dict(os.environ)
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.serve_throughput import free_port, serve  # noqa: E402
from tasks.common.paths import split_csv  # noqa: E402
from tasks.production import production_bento  # noqa: E402

CASES = ("alone", "two_trainings", "beside_monitor", "beside_service")


def scratch(base: Path, name: str, epochs: int, links: tuple[str, ...], code: Path) -> Path:
    """A folder with the checkout's params.yaml (every one of `epochs` epochs run) and links to this project's outputs."""
    folder = base / name
    (folder / "data").mkdir(parents=True)
    for link in links:
        (folder / link).symlink_to(ROOT / link)
    raw = yaml.safe_load((code / "params.yaml").read_text())  # the checkout's own keys
    raw["train"].update({"epochs": epochs, "early_stopping": {**raw["train"]["early_stopping"], "patience": 0}})
    (folder / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return folder


def start(module: str, folder: Path, code: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", module], cwd=folder, env={**SHELL_ENV, "PYTHONPATH": str(code)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def rate(training: subprocess.Popen, folder: Path) -> float:
    _, err = training.communicate()
    if training.returncode != 0:
        raise SystemExit(f"the training in {folder} failed: {err.strip().splitlines()[-1:]}")
    return json.loads((folder / "reports/train/summary.json").read_text())["train_img_s"]


def trainings(base: Path, count: int, epochs: int, code: Path) -> list[tuple[subprocess.Popen, Path]]:
    folders = [scratch(base, f"train-{i}", epochs, ("data/split", "data/clean"), code) for i in range(count)]
    return [(start("tasks.train", folder, code), folder) for folder in folders]


def beside_monitor(base: Path, epochs: int, code: Path) -> dict:
    folder = scratch(base, "monitor", epochs, ("data/split", "data/clean", "models", "runtime"), code)
    [(training, train_folder)] = trainings(base, 1, epochs, code)
    runs = 0
    while training.poll() is None:
        subprocess.run([sys.executable, "-m", "tasks.monitor"], cwd=folder, env={**SHELL_ENV, "PYTHONPATH": str(code)},
                       capture_output=True, check=True)
        runs += 1
    return {"train_img_s": rate(training, train_folder), "monitor_runs": runs}


def beside_service(base: Path, epochs: int, code: Path, clients: int) -> dict:
    images = [(ROOT / f).read_bytes() for f in pd.read_csv(ROOT / split_csv("test"))["file"]]
    port = free_port()
    server = serve(production_bento(), "packaged", port, str(base / "traffic"))
    done, answered = threading.Event(), []

    def client(offset: int) -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
            i = offset
            while not done.is_set():
                reply = http.post("/classify", files={"images": ("x.png", images[i % len(images)], "image/png")})
                answered.append(reply.status_code == 200)
                i += clients

    try:
        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
        for thread in threads:
            thread.start()
        started = time.monotonic()
        [(training, train_folder)] = trainings(base, 1, epochs, code)
        train_rate = rate(training, train_folder)
        seconds = time.monotonic() - started
        done.set()
        for thread in threads:
            thread.join()
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # bentoml serve and its workers
        server.wait(30)
    return {"train_img_s": train_rate, "service_req_s": round(len(answered) / seconds, 1),
            "service_errors": answered.count(False)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python benchmarks/threads.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES), help="which cases (default: all)")
    parser.add_argument("--epochs", type=int, default=4, help="epochs of each training (default 4)")
    parser.add_argument("--clients", type=int, default=8, help="beside_service: client threads (default 8)")
    parser.add_argument("--code", type=Path, default=ROOT, help="checkout the trainings and the monitor stage run from")
    args = parser.parse_args(argv)
    code = args.code.resolve()
    machine = {"cores": len(os.sched_getaffinity(0)), "code": str(code),
               "IMGCLF_THREADS": SHELL_ENV.get("IMGCLF_THREADS"), "OMP_WAIT_POLICY": SHELL_ENV.get("OMP_WAIT_POLICY")}
    alone = None
    for case in args.cases:
        with tempfile.TemporaryDirectory(prefix=f"threads-{case}-") as tmp:
            base = Path(tmp)
            if case == "alone":
                [(training, folder)] = trainings(base, 1, args.epochs, code)
                result = {"train_img_s": rate(training, folder)}
                alone = result["train_img_s"]
            elif case == "two_trainings":
                rates = [rate(training, folder) for training, folder in trainings(base, 2, args.epochs, code)]
                result = {"train_img_s": rates}
            elif case == "beside_monitor":
                result = beside_monitor(base, args.epochs, code)
            else:
                result = beside_service(base, args.epochs, code, args.clients)
        if alone and case != "alone":
            shares = [r / alone for r in (result["train_img_s"] if isinstance(result["train_img_s"], list)
                                          else [result["train_img_s"]])]
            result["share_of_alone"] = [round(s, 2) for s in shares] if len(shares) > 1 else round(shares[0], 2)
        print(json.dumps({"case": case, **result, **machine}), flush=True)


if __name__ == "__main__":
    main()
