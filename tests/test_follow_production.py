"""A running service follows production: promotion and rollback reach it under load, with no failed
request; a production model that cannot be loaded leaves the old one serving.

One module-wide setup: the package stage (model A and its Bento), two more versions in the same
BentoML store (B: A's weights with another calibration temperature; a broken one: its weights file
is garbage), and `bentoml serve` of the Bento following deploy/production.json in the work folder.
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import bentoml
import httpx
import pytest

from tasks import package
from tasks.common.paths import POINTER, STORE_ARCHIVES
from tasks.model.bundle import META_FILE, WEIGHTS_FILE
from tasks.model.registry import FOLLOW_ENV, archive_bento, model_dir, write_pointer
from tasks.model.served import RUNTIME_JSON
from tasks.production import rollback
from tests.conftest import PROJECT_ROOT, write_image_set
from tests.serving import bentoml_serve

pytestmark = [pytest.mark.serving, pytest.mark.slow(reason="serves a second Bento and switches its model under load")]

SWITCH_WITHIN = 60.0  # seconds from a change of production to the service answering with the new model (1-2 s
# here, measured in docs/serving.md; the bound leaves room for the other test worker's load)
IMPORT_WITHIN = 120.0  # the same when the model must first be imported from deploy/store (a `bentoml import`
# subprocess, then a load in every worker: tens of seconds on a busy 2-core machine)
IN_A_ROW = 20  # answers in a row from the new model that count as switched


def save_variant(packaged: dict, name: str, change) -> str:
    """A new version of the packaged model in the same store, its bundle and runtime files (one folder
    here) changed by `change`."""
    workdir, report = packaged["workdir"], packaged["report"]
    bundle = workdir / name
    shutil.copytree(workdir / "models", bundle)
    shutil.copytree(workdir / "runtime", bundle, dirs_exist_ok=True)
    change(bundle)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BENTOML_HOME", report["bentoml_home"])
        model = package.save_model(report["model_tag"].split(":")[0], bundle, bundle, report["metadata"],
                                   {"train": [], "val": []})
    return str(model.tag)


def sharper(bundle: Path) -> None:
    meta = json.loads((bundle / META_FILE).read_text())
    (bundle / META_FILE).write_text(json.dumps({**meta, "temperature": 1.0}))  # A's is 3.0


def garbage_weights(bundle: Path) -> None:
    (bundle / WEIGHTS_FILE).write_bytes(b"not a safetensors file")


def truncated_onnx(bundle: Path) -> None:
    onnx = bundle / json.loads((bundle / RUNTIME_JSON).read_text())["file"]
    onnx.write_bytes(onnx.read_bytes()[:5000])


@pytest.fixture(scope="module")
def following(packaged):
    workdir, report = packaged["workdir"], packaged["report"]
    tags = {"a": report["model_tag"], "b": save_variant(packaged, "sharper", sharper),
            "broken": save_variant(packaged, "broken", garbage_weights),
            "truncated_onnx": save_variant(packaged, "truncated-onnx", truncated_onnx)}
    pointer = workdir / POINTER
    pointer.parent.mkdir(parents=True, exist_ok=True)
    write_pointer(pointer, {"current": entry(tags["a"], report), "previous": []})
    image = write_image_set(workdir / "samples", {"cat": 1}, seed=7)[0].read_bytes()
    with bentoml_serve(packaged, {FOLLOW_ENV: str(POINTER)}, log_name="follow.log") as url:
        yield {**tags, "url": url, "workdir": workdir, "pointer": pointer, "report": report, "image": image,
               "log": workdir / "follow.log"}


def entry(tag: str, report: dict) -> dict:
    """A pointer entry as promotion writes it (tasks/production.py), less the gate's evidence."""
    return {"model": tag, "bento": report["bento_tag"]}


async def steady_stream(url: str, image: bytes, answers: list, stop: asyncio.Event, clients: int = 4) -> None:
    """`clients` loops of POST /classify until `stop`: (time, status, model, top probability) each."""
    async with httpx.AsyncClient(timeout=30) as client:
        async def one_client() -> None:
            while not stop.is_set():
                try:
                    resp = await client.post(url + "/classify", files=[("images", ("cat.png", image, "image/png"))])
                except httpx.HTTPError as err:
                    answers.append((time.monotonic(), type(err).__name__, None, None))
                    continue
                body = resp.json() if resp.status_code == 200 else {}
                top = body["results"][0]["predictions"][0]["probability"] if body else None
                answers.append((time.monotonic(), resp.status_code, body.get("model"), top))

        await asyncio.gather(*(one_client() for _ in range(clients)))


async def switched_to(answers: list, tag: str, since: float) -> float:
    """Seconds from `since` to the first answer by `tag`, once IN_A_ROW answers in a row came from it."""
    while time.monotonic() - since < SWITCH_WITHIN:
        latest = answers[-IN_A_ROW:]
        if len(latest) == IN_A_ROW and all(a[0] > since and a[2] == tag for a in latest):
            return next(a[0] for a in answers if a[0] > since and a[2] == tag) - since
        await asyncio.sleep(0.2)
    seen = sorted({str(a[2]) for a in answers if a[0] > since})
    raise AssertionError(f"still not serving {tag} {SWITCH_WITHIN:.0f} s after production changed (answers: {seen})")


def test_promotion_and_rollback_reach_the_running_service_without_a_failed_request(following, monkeypatch):
    a, b, workdir = following["a"], following["b"], following["workdir"]
    monkeypatch.setenv("BENTOML_HOME", following["report"]["bentoml_home"])  # rollback checks the store

    async def scenario() -> tuple[list, float, float]:
        answers, stop = [], asyncio.Event()
        stream = asyncio.create_task(steady_stream(following["url"], following["image"], answers, stop))
        await asyncio.sleep(1.0)
        promoted = time.monotonic()
        write_pointer(following["pointer"], {"current": entry(b, following["report"]),
                                             "previous": [entry(a, following["report"])]})  # what promote writes
        to_b = await switched_to(answers, b, promoted)
        rolled_back = time.monotonic()
        assert rollback(workdir)["model"] == a
        to_a = await switched_to(answers, a, rolled_back)
        await asyncio.sleep(0.5)
        stop.set()
        await stream
        return answers, to_b, to_a

    answers, to_b, to_a = asyncio.run(scenario())
    print(f"{len(answers)} requests; promotion answered after {to_b:.1f} s, rollback after {to_a:.1f} s")

    failed = [a for a in answers if a[1] != 200]
    assert not failed, failed[:5]
    assert to_b < SWITCH_WITHIN and to_a < SWITCH_WITHIN
    # B is A calibrated with a lower temperature: its answers are surer, so the network that answered changed too.
    top = {tag: {round(a[3], 6) for a in answers if a[2] == tag} for tag in (a, b)}
    assert min(top[b]) > max(top[a]), top
    log = following["log"].read_text()
    assert f"production changed: serving {b} (was {a})" in log and f"production changed: serving {a} (was {b})" in log


def test_a_production_model_that_fails_to_load_leaves_the_old_one_serving(following):
    a, report, url = following["a"], following["report"], following["url"]
    missing = f"{a.split(':')[0]}:notinthestore"
    for bad in (following["broken"], missing):
        write_pointer(following["pointer"], {"current": entry(bad, report), "previous": [entry(a, report)]})
        expected = f"production model {bad} could not be loaded, still serving {a}: "
        deadline = time.monotonic() + SWITCH_WITHIN
        while expected not in following["log"].read_text():
            assert time.monotonic() < deadline, following["log"].read_text()[-3000:]
            time.sleep(0.5)

        resp = httpx.post(url + "/classify", files=[("images", ("cat.png", following["image"], "image/png"))],
                          timeout=30)
        assert resp.status_code == 200 and resp.json()["model"] == a
        assert httpx.get(url + "/readyz", timeout=10).status_code == 200
    log = following["log"].read_text()
    assert (f"production model {missing} could not be loaded, still serving {a}: UserError: model {missing} is "
            "not in the BentoML model store under") in log and "nor archived as" in log
    write_pointer(following["pointer"], {"current": entry(a, report), "previous": []})


def test_a_model_whose_onnx_file_is_corrupted_is_served_by_its_pytorch_weights_and_the_log_says_why(following):
    a, bad, report, url = following["a"], following["truncated_onnx"], following["report"], following["url"]
    runtime = report["metadata"]["runtime"]["name"]
    write_pointer(following["pointer"], {"current": entry(bad, report), "previous": [entry(a, report)]})
    deadline = time.monotonic() + SWITCH_WITHIN
    while f"production changed: serving {bad}" not in following["log"].read_text():
        assert time.monotonic() < deadline, following["log"].read_text()[-3000:]
        time.sleep(0.5)

    resp = httpx.post(url + "/classify", files=[("images", ("cat.png", following["image"], "image/png"))], timeout=30)

    assert resp.status_code == 200 and resp.json()["model"] == bad
    assert resp.json()["results"][0]["predictions"][0]["label"] == "cat"
    log = following["log"].read_text()
    assert f"{bad}: {runtime} cannot be used (" in log and "running the PyTorch weights instead" in log
    assert f"loaded {bad} (runtime torch)" in log
    write_pointer(following["pointer"], {"current": entry(a, report), "previous": []})
    while f"production changed: serving {a} (was {bad})" not in following["log"].read_text():
        assert time.monotonic() < deadline + SWITCH_WITHIN, following["log"].read_text()[-3000:]
        time.sleep(0.5)


def test_a_production_model_this_store_lacks_comes_from_deploy_store(following):
    """As on a second machine after `git pull` and `dvc pull`: production names a model that is not in
    the store, but its Bento is archived in deploy/store; the service imports it and switches."""
    a, report, url, workdir = following["a"], following["report"], following["url"], following["workdir"]
    home = report["bentoml_home"]
    elsewhere = save_variant({"workdir": workdir, "report": report}, "elsewhere", sharper)
    bento = package.build_bento(bentoml.models.get(elsewhere))
    archive = archive_bento(elsewhere, bento, home, workdir / STORE_ARCHIVES)
    env = {**os.environ, "BENTOML_HOME": home}
    for forget in (["delete", "-y", bento], ["models", "delete", "-y", elsewhere]):  # made on "another machine"
        subprocess.run([sys.executable, "-m", "bentoml", *forget], env=env, check=True, capture_output=True)
    assert not model_dir(elsewhere, home).exists() and archive.is_file()

    logged_before = len(following["log"].read_text())
    write_pointer(following["pointer"], {"current": entry(elsewhere, report), "previous": [entry(a, report)]})
    deadline, in_a_row = time.monotonic() + IMPORT_WITHIN, 0
    while in_a_row < IN_A_ROW:  # every API worker has switched, not just one
        resp = httpx.post(url + "/classify", files=[("images", ("cat.png", following["image"], "image/png"))],
                          timeout=30)
        assert resp.status_code == 200
        in_a_row = in_a_row + 1 if resp.json()["model"] == elsewhere else 0
        assert time.monotonic() < deadline, following["log"].read_text()[-3000:]
        time.sleep(0.1)
    assert model_dir(elsewhere, home).is_dir()  # imported into this machine's store
    assert "could not be loaded" not in following["log"].read_text()[logged_before:]
    write_pointer(following["pointer"], {"current": entry(a, report), "previous": []})


def test_serve_without_a_production_model_or_its_bento_says_what_to_do(tmp_path: Path):
    shutil.copy(PROJECT_ROOT / "params.yaml", tmp_path / "params.yaml")
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml"), "PYTHONPATH": str(PROJECT_ROOT)}

    def serve() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "tasks.production", "serve"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=60)

    refused = serve()
    assert refused.returncode == 2 and refused.stderr.splitlines() == [
        "production: error: no production model yet; run the pipeline, then python -m tasks.production promote"]

    production = {"model": "image-classifier:abc", "bento": "image-classifier-service:abc"}
    write_pointer(tmp_path / POINTER, {"current": production, "previous": []})
    refused = serve()
    assert refused.returncode == 2 and refused.stderr.splitlines() == [
        "production: error: model image-classifier:abc is not in the BentoML model store under "
        f"{tmp_path / 'bentoml'}, nor archived as deploy/store/image-classifier-abc.bento.tar.gz; run dvc pull "
        "(it brings deploy/store), or roll back"]
