"""Helpers for the tests that serve a real Bento: a fitted bundle, the package stage, `bentoml serve`."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
import torch

from tasks import evaluate, package
from tasks.common.files import sha256
from tasks.data.images import open_rgb
from tasks.model.backbones import create_backbone, pooled_features
from tasks.model.bundle import fit_projection, load_bundle, save_bundle
from tasks.model.lineage import TRIGGER_ENV
from tasks.model.transforms import eval_transform
from tests.conftest import free_port, make_params, write_image_set

CLASSES = {"cat": 8, "dog": 8}  # conftest colours: cat images are red, dog images green
IMAGE_SIZE = 32
TEMPERATURE = 3.0  # the service must divide the logits by the bundle's temperature


def write_evaluated_bundle(workdir: Path, temperature: float = TEMPERATURE, runtimes: bool = True) -> None:
    """What train + evaluate leave behind: models/, metrics.json, the training split and, with
    `runtimes`, runtime/ as the evaluate stage chooses it (evaluate.runtime auto), the images as test split."""
    paths = write_image_set(workdir / "images", CLASSES, seed=0)
    labels = sorted(CLASSES)
    torch.manual_seed(0)
    backbone = create_backbone("tf_efficientnet_lite0", "imagenet", num_classes=len(labels))
    model = backbone.model.eval()
    transform = eval_transform(IMAGE_SIZE, backbone.mean, backbone.std, backbone.crop_pct)
    with torch.no_grad():
        features = pooled_features(model, torch.stack([transform(open_rgb(p)) for p in paths]))
    targets = torch.tensor([labels.index(p.parent.name) for p in paths])
    head = model.get_classifier()  # fit only the head, on frozen features: a second on CPU
    optimizer = torch.optim.Adam(head.parameters(), lr=0.01)
    for _ in range(100):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(head(features), targets).backward()
        optimizer.step()
    meta = {
        "labels": labels,
        "backbone": "tf_efficientnet_lite0",
        "image_size": IMAGE_SIZE,
        "mean": list(backbone.mean),
        "std": list(backbone.std),
        "crop_pct": backbone.crop_pct,
        "temperature": temperature,
    }
    save_bundle(workdir / "models", model, meta, fit_projection(features.detach()))

    (workdir / "reports/evaluate").mkdir(parents=True, exist_ok=True)
    metrics = {"accuracy": 1.0, "macro_f1": 1.0, "test_images": 16, "per_class": {}}
    (workdir / "reports/evaluate/metrics.json").write_text(json.dumps(metrics))
    (workdir / "data/split").mkdir(parents=True, exist_ok=True)
    rows = "".join(f"{p.relative_to(workdir)},{p.parent.name},{sha256(p)}\n" for p in paths)
    (workdir / "data/split/train.csv").write_text("file,label,sha256\n" + rows)
    (workdir / "data/split/val.csv").write_text("file,label,sha256\n")
    if runtimes:
        bundle = load_bundle(workdir / "models")
        probs = bundle.predict_proba(bundle.preprocess([open_rgb(p) for p in paths]))
        evaluate.serving_runtime(make_params(), workdir, bundle, paths, targets.numpy(), probs)


def package_once(workdir: Path) -> dict:
    """The package stage run once, with BENTOML_HOME in `workdir`: its result and reports/package/bento.json."""
    write_evaluated_bundle(workdir)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BENTOML_HOME", str(workdir / "bentoml"))
        mp.delenv("IMAGE_CLASSIFIER_MODEL", raising=False)
        mp.setenv(TRIGGER_ENV, "schedule")
        started = time.perf_counter()
        result = package.run(make_params(), workdir)
        print(f"package stage: {time.perf_counter() - started:.1f} s")
    report = json.loads((workdir / "reports/package/bento.json").read_text())
    return {"workdir": workdir, "result": result, "report": report}


@contextlib.contextmanager
def served(cmd: list[str], cwd: Path, env: dict, log_path: Path, ready_within: float = 180):
    """`cmd` (a server taking --host and --port) on a free 127.0.0.1 port, started in `cwd` with `env`;
    its URL once /readyz answers 200.

    Stopped on exit: SIGTERM to its process group (the server stops its workers), then SIGKILL if it hangs.
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with log_path.open("w") as log:
        proc = subprocess.Popen([*cmd, "--host", "127.0.0.1", "--port", str(port)], cwd=cwd, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            started = time.perf_counter()
            while True:
                if proc.poll() is not None:
                    pytest.fail(f"{' '.join(cmd[1:4])} exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                        break
                if time.perf_counter() - started > ready_within:
                    pytest.fail(f"service not ready after {ready_within:.0f} s:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.5)
            print(f"server ready after {time.perf_counter() - started:.1f} s")
            yield url
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def server_processes(url: str) -> list[psutil.Process]:
    """The server listening on `url`'s port and all its workers."""
    port = url.rsplit(":", 1)[1]
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if "--port" in cmd and cmd[cmd.index("--port") + 1:][:1] == [port]:
            return [proc, *proc.children(recursive=True)]
    raise AssertionError(f"no server process on port {port}")


def maps_library(proc: psutil.Process, name: str) -> bool:
    """Whether `proc` has a shared library whose file name starts with `name` loaded."""
    return any(Path(m.path).name.startswith(name) for m in proc.memory_maps())


def bentoml_serve(packaged: dict, env: dict, log_name: str = "serve.log"):
    """`bentoml serve <bento>` of a package_once() result, started in its work folder with `env` added."""
    workdir, report = packaged["workdir"], packaged["report"]
    full_env = {**os.environ, "BENTOML_HOME": report["bentoml_home"], "BENTOML_DO_NOT_TRACK": "True", **env}
    full_env.pop("IMAGE_CLASSIFIER_MODEL", None)
    return served([sys.executable, "-m", "bentoml", "serve", report["bento_tag"]], workdir, full_env,
                  workdir / log_name)


def production_serve(project: Path, env: dict):
    """`python -m tasks.production serve` (what `make serve` runs) in a project folder."""
    return served([sys.executable, "-m", "tasks.production", "serve"], project, env, project / "serve.log")
