"""The service end to end: package stage -> Bento in a temporary BentoML home -> `bentoml serve` -> HTTP.

One module-wide setup (about a minute on 2 CPU cores): a bundle whose head is fitted in a second on
two very different classes, the package stage, then the Bento served on 127.0.0.1.
"""
from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import os
import re
import time
from pathlib import Path

import bentoml
import httpx
import numpy as np
import pytest
from PIL import Image

from service.access import TOKEN_ENV
from service.admission import MAX_IN_FLIGHT_ENV
from service.settings import ServiceParams
from tasks import package
from tasks.common.config import UserError, load_params
from tasks.common.files import sha256
from tasks.data.images import open_rgb
from tasks.labels.queue import kept, queue_dir
from tasks.model.lineage import KEYS
from tasks.model.served import load_classifier
from tasks.monitoring.features import FEATURE_COLUMNS, PREDICTION_COLUMNS
from tests.conftest import make_params, write_image_set
from tests.serving import IMAGE_SIZE, bentoml_serve, maps_library, server_processes

pytestmark = pytest.mark.serving

TOKEN = "test-token-7f3a"
MAX_IN_FLIGHT = 48  # above the 32 concurrent requests of the batching test, below the overload test's burst
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TRAFFIC = "traffic"  # relative: the service resolves it against the folder `bentoml serve` started in


@pytest.fixture(scope="module")
def server(packaged: dict):
    """`bentoml serve <bento>` on 127.0.0.1, started in the work folder; stopped after the module."""
    env = {
        "IMAGE_CLASSIFIER_TRAFFIC_DIR": TRAFFIC,
        TOKEN_ENV: TOKEN,  # every test below sends it; test_a_token_guards_the_api_not_the_health_checks checks it
        MAX_IN_FLIGHT_ENV: str(MAX_IN_FLIGHT),
    }
    with bentoml_serve(packaged, env) as url:
        workdir = packaged["workdir"]
        yield {"url": url, "traffic": workdir / TRAFFIC, "workdir": workdir}


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> dict[str, Path]:
    """Fresh images of each class, never seen while fitting."""
    root = tmp_path_factory.mktemp("samples")
    paths = write_image_set(root, {"cat": 1, "dog": 1}, seed=7)
    return {p.parent.name: p for p in paths}


def post(url: str, headers: dict | None = None, **request) -> httpx.Response:
    """POST /classify with the service's token added to the request's own headers."""
    return httpx.post(url + "/classify", headers={**AUTH, **(headers or {})}, timeout=30, **request)


def classify(url: str, files: list, data: dict | None = None) -> httpx.Response:
    return post(url, files=files, data=data)


def png_bytes(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


def upload(path: Path, name: str) -> tuple:
    return ("images", (name, path.read_bytes(), "image/png"))


# ------------------------------------------------------------------------------ package stage


def test_package_stores_model_and_bento(packaged: dict):
    report, result = packaged["report"], packaged["result"]
    assert result["model"] == report["model_tag"] and result["bento"] == report["bento_tag"]
    assert result["accuracy"] == 1.0

    model = bentoml.models.get(report["model_tag"])
    assert model.tag in [m.tag for m in bentoml.models.list("image-classifier")]
    workdir = packaged["workdir"]
    runtime = json.loads((workdir / "runtime/runtime.json").read_text())  # what the evaluate stage chose
    assert set(os.listdir(model.path)) >= {"model.safetensors", "model.json", "runtime.json", runtime["file"]}
    meta = model.info.metadata
    assert meta["metrics"]["accuracy"] == 1.0 and meta["metrics"]["macro_f1"] == 1.0
    assert meta["labels"] == ["cat", "dog"] and meta["image_size"] == IMAGE_SIZE
    assert meta["backbone"] == "tf_efficientnet_lite0"
    assert meta["runtime"]["name"] == runtime["runtime"] and meta["runtime"]["figures"]["accuracy"] == 1.0
    assert meta["weights_sha256"] == sha256(workdir / "models/model.safetensors")
    assert meta["data_version"] == sha256(workdir / "data/split/train.csv")
    assert report["metadata"] == meta
    # Lineage: a work folder without dvc.lock or git says "unknown" for those, and packages anyway.
    lineage = meta["lineage"]
    assert tuple(lineage) == KEYS and lineage["trigger"] == "schedule"
    assert lineage["data_root"] == make_params().data.root and lineage["split_hash"] == "unknown"
    assert lineage["params_sha256"] == "unknown"  # no params.yaml in the work folder

    bento = bentoml.get(report["bento_tag"])
    assert bento.tag in [b.tag for b in bentoml.list()]
    assert str(model.tag) in [str(m.tag) for m in bento.info.all_models]
    labels = bento.info.labels
    assert labels == {"project": "imgclf-pipeline", **report["bento_labels"]}
    assert {k: labels[k] for k in KEYS} == lineage and labels["test_accuracy"] == "1.0"
    assert labels["runtime"] == runtime["runtime"]


def test_package_without_an_evaluated_bundle_says_what_to_run(tmp_path: Path):
    with pytest.raises(UserError, match="no model bundle in .*dvc repro train"):
        package.run(make_params(), tmp_path)

    (tmp_path / "models").mkdir()
    (tmp_path / "models/model.safetensors").write_bytes(b"weights")
    (tmp_path / "models/model.json").write_text("{not json")
    with pytest.raises(UserError, match="model.json is not valid JSON"):
        package.run(make_params(), tmp_path)

    (tmp_path / "models/model.safetensors").write_bytes(b"weights")
    (tmp_path / "models/model.json").write_text(json.dumps({"labels": ["a", "b"], "backbone": "x", "image_size": 8}))
    with pytest.raises(UserError, match="metrics.json not found; run dvc repro evaluate"):
        package.run(make_params(), tmp_path)


# ------------------------------------------------------------------------------ HTTP API


def test_upload_gets_the_right_label(server: dict, samples: dict[str, Path]):
    started = time.perf_counter()
    resp = classify(server["url"], [upload(samples["dog"], "my dog.png")])
    print(f"one image: {(time.perf_counter() - started) * 1000:.0f} ms")

    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["model"].startswith("image-classifier:")
    [result] = body["results"]
    assert result["filename"] == "my dog.png"
    assert [p["label"] for p in result["predictions"]] == ["dog", "cat"]  # top_k: 3 capped at 2 classes
    assert result["predictions"][0]["probability"] > 0.5
    assert sum(p["probability"] for p in result["predictions"]) == pytest.approx(1.0, abs=1e-4)
    # Calibrated: the served runtime's logits divided by the bundle's temperature, not the plain softmax.
    served = load_classifier(bentoml.models.get(body["model"]).path)
    calibrated, _ = served.predict(served.preprocess([open_rgb(samples["dog"])]))
    assert result["predictions"][0]["probability"] == pytest.approx(calibrated.max(), abs=1e-4)
    plain, _ = dataclasses.replace(served, meta={**served.meta, "temperature": 1.0}).predict(
        served.preprocess([open_rgb(samples["dog"])]))
    assert abs(calibrated.max() - plain.max()) > 0.01


def test_the_runtime_auto_chose_is_served_and_the_api_workers_load_no_pytorch(server: dict, packaged: dict):
    chosen = json.loads((server["workdir"] / "runtime/runtime.json").read_text())
    tag = packaged["report"]["model_tag"]
    # ONNX Runtime measured several times faster than PyTorch here: auto takes one of its variants.
    assert chosen["setting"] == "auto" and chosen["runtime"] in ("onnx", "onnx-int8")
    assert packaged["report"]["metadata"]["runtime"]["name"] == chosen["runtime"]
    assert f"loaded {tag} (runtime {chosen['runtime']})" in (server["workdir"] / "serve.log").read_text()

    workers = server_processes(server["url"])
    assert len(workers) >= 4  # the server, two API workers, the model worker
    assert [p.pid for p in workers if maps_library(p, "libtorch")] == []
    assert len([p for p in workers if maps_library(p, "libonnxruntime")]) == 1  # the model worker alone


def test_two_images_in_one_request(server: dict, samples: dict[str, Path]):
    resp = classify(server["url"], [upload(samples["cat"], "a.png"), upload(samples["dog"], "b.png")], data={"top_k": "1"})

    assert resp.status_code == 200, resp.text
    results = resp.json()["results"]
    assert [r["filename"] for r in results] == ["a.png", "b.png"]
    assert [[p["label"] for p in r["predictions"]] for r in results] == [["cat"], ["dog"]]


BOUNDARY = "test-boundary"


def form(*parts: tuple[str, str | tuple[str, bytes]]) -> dict:
    """httpx.post arguments for a hand-made multipart body: (name, text) or (name, (filename, bytes))."""
    chunks = []
    for name, value in parts:
        if isinstance(value, tuple):
            filename, content = value
            head = f'name="{name}"; filename="{filename}"\r\nContent-Type: application/octet-stream'
        else:
            head, content = f'name="{name}"', value.encode()
        chunks.append(f"--{BOUNDARY}\r\nContent-Disposition: form-data; {head}\r\n\r\n".encode() + content + b"\r\n")
    body = b"".join(chunks) + f"--{BOUNDARY}--\r\n".encode()
    return {"content": body, "headers": {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}}


TEXT = ("notes.txt", b"not an image\n")
BAD_REQUESTS = {  # case: (request arguments given a good PNG, expected "loc: message" in the answer)
    "text file": (lambda png: form(("images", TEXT)), "images.0: notes.txt: not a readable image"),
    "empty file": (lambda png: form(("images", ("empty.png", b""))), "images.0: empty.png: the upload is empty"),
    "no files": (lambda png: form(("top_k", "1")), "images: no images"),
    "empty form": (lambda png: form(), "images: no images"),
    "no body": (lambda png: {}, "body: send multipart/form-data"),
    "json body": (lambda png: {"json": {"images": ["http://127.0.0.1:1/x.png"]}}, "body: send multipart/form-data"),
    "malformed body": (
        lambda png: {"content": b"garbage", "headers": {"content-type": "multipart/form-data; boundary=x"}},
        "body: unreadable multipart body",
    ),
    "top_k not a number": (
        lambda png: form(("images", ("a.png", png)), ("top_k", "abc")), "top_k: Input should be a valid integer"
    ),
    "top_k zero": (lambda png: form(("images", ("a.png", png)), ("top_k", "0")), "top_k: Input should be greater"),
    "top_k above classes": (
        lambda png: form(("images", ("a.png", png)), ("top_k", "3")), "top_k: must be between 1 and 2"
    ),
    "wrong field name": (lambda png: form(("files", ("a.png", png))), "files: unknown field 'files'"),
    "images as text": (lambda png: form(("images", "http://127.0.0.1:1/x.png")), "images.0: must be a file upload"),
    "one bad among good": (
        lambda png: form(("images", ("a.png", png)), ("images", TEXT)), "images.1: notes.txt: not a readable image"
    ),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_input_is_a_4xx_json_error(server: dict, samples: dict[str, Path], case: str):
    build, expected = BAD_REQUESTS[case]

    resp = post(server["url"], **build(samples["cat"].read_bytes()))

    assert 400 <= resp.status_code < 500, (resp.status_code, resp.text)
    body = resp.json()
    assert body["error"]
    problems = [f"{'.'.join(map(str, d['loc']))}: {d['msg']}" for d in body["detail"]]
    assert any(p.startswith(expected) for p in problems), problems


def test_concurrent_requests_share_forward_passes(server: dict, samples: dict[str, Path]):
    """Concurrent requests share forward passes: the service's histogram of images per forward pass."""

    def batch_stats() -> tuple[float, float]:
        text = httpx.get(server["url"] + "/metrics", timeout=10, headers=AUTH).text
        found = {
            kind: sum(float(v) for v in re.findall(rf"^image_classifier_batch_images_{kind}(?:{{[^}}]*}})? (\S+)$",
                                                 text, re.M))
            for kind in ("sum", "count")
        }
        return found["sum"], found["count"]

    async def burst(n: int) -> list[int]:
        image = samples["cat"].read_bytes()
        async with httpx.AsyncClient(timeout=60, headers=AUTH) as client:
            responses = await asyncio.gather(*(
                client.post(server["url"] + "/classify", files=[("images", (f"{i}.png", image, "image/png"))])
                for i in range(n)
            ))
        return [r.status_code for r in responses]

    images_before, passes_before = batch_stats()
    started = time.perf_counter()
    codes = asyncio.run(burst(32))
    print(f"32 concurrent requests: {time.perf_counter() - started:.2f} s")
    images_after, passes_after = batch_stats()

    assert codes == [200] * 32
    assert images_after - images_before == 32
    # Each API worker sends the images that arrive while its forward pass runs together in the next:
    # 32 requests take far fewer forward passes than 32.
    assert 1 <= passes_after - passes_before < 32 // 2


def test_traffic_is_logged_for_monitoring(server: dict, samples: dict[str, Path]):
    def logged_rows() -> dict[Path, list[dict]]:
        """Rows per log file: each API worker writes its own."""
        rows = {}
        for path in sorted(server["traffic"].rglob("*.log")):
            records = [json.loads(line) for line in path.read_text().splitlines()]
            rows[path] = [r for r in records if all(col in r for col in FEATURE_COLUMNS + PREDICTION_COLUMNS)]
        return rows

    before = logged_rows()
    resp = classify(server["url"], [upload(samples["cat"], "cat.png"), upload(samples["dog"], "dog.png")])
    assert resp.status_code == 200, resp.text
    assert post(server["url"], **form(("images", TEXT))).status_code == 400  # not logged

    new = [row for path, rows in logged_rows().items() for row in rows[len(before.get(path, [])):]]
    assert len(new) == 2
    cat, dog = new
    assert (cat["prediction"], dog["prediction"]) == ("cat", "dog")
    assert cat["width"] == cat["height"] == 16.0 and 0 <= cat["brightness"] <= 1
    assert 0.5 < dog["confidence"] <= 1 and cat["request_id"] == dog["request_id"]
    # The embeddings drift monitoring compares are the served runtime's (ONNX Runtime here), as the
    # monitor stage computes its reference with load_classifier too.
    served = load_classifier(bentoml.models.get(resp.json()["model"]).path)
    _, embeddings = served.predict(served.preprocess([open_rgb(samples["cat"]), open_rgb(samples["dog"])]))
    logged = np.array([[row[f"emb_{i}"] for i in range(8)] for row in (cat, dog)])
    assert served.runtime != "torch" and np.allclose(logged, embeddings, atol=1e-4)
    assert (server["traffic"] / "image_classifier" / "data").is_dir()  # under the launch folder


def test_the_least_sure_images_are_kept_for_review_and_only_those(server: dict, samples: dict[str, Path]):
    """Blends of a cat and a dog image, from mostly cat to mostly dog: those the model calls with a
    top-two margin below service.uncertain.margin are kept with their record, the rest are not."""
    cat, dog = open_rgb(samples["cat"]), open_rgb(samples["dog"])
    blends = [Image.blend(cat, dog, t) for t in np.linspace(0.0, 1.0, 21)]
    files = [("images", (f"blend_{i:02d}.png", png_bytes(img), "image/png")) for i, img in enumerate(blends)]
    resp = classify(server["url"], files, data={"top_k": "2"})
    assert resp.status_code == 200, resp.text
    below = load_params(model=ServiceParams).service.uncertain.margin
    margins = {r["filename"]: r["predictions"][0]["probability"] - r["predictions"][1]["probability"]
               for r in resp.json()["results"]}
    queue = kept(queue_dir(server["traffic"]))
    queue = queue[queue["filename"].str.startswith("blend_")]
    assert set(queue["filename"]) == {name for name, m in margins.items() if m < below}
    assert len(queue) >= 1, margins  # the halfway blends are coin tosses
    record = queue.iloc[0]
    assert record["model"] == resp.json()["model"] and set(record["probabilities"]) == {"cat", "dog"}
    assert Image.open(record["image"]).size == (16, 16)


def test_a_token_guards_the_api_not_the_health_checks(server: dict, samples: dict[str, Path]):
    files = [("images", ("cat.png", samples["cat"].read_bytes(), "image/png"))]
    for headers in ({}, {"Authorization": "Bearer not-the-token"}):
        refused = httpx.post(server["url"] + "/classify", files=files, headers=headers, timeout=30)
        assert refused.status_code == 401 and refused.json()["error"] == "unauthorized"
    assert httpx.post(server["url"] + "/classify", files=files, headers=AUTH, timeout=30).status_code == 200
    assert httpx.get(server["url"] + "/readyz", timeout=10).status_code == 200
    assert httpx.get(server["url"] + "/livez", timeout=10).status_code == 200
    assert TOKEN not in (server["workdir"] / "serve.log").read_text()  # never logged


def test_overload_is_refused_with_retry_after_and_the_rest_answered(server: dict, samples: dict[str, Path]):
    image = samples["cat"].read_bytes()

    async def burst(n: int) -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=n)
        async with httpx.AsyncClient(timeout=60, headers=AUTH, limits=limits) as client:
            return await asyncio.gather(*(
                client.post(server["url"] + "/classify", files=[("images", (f"{i}.png", image, "image/png"))])
                for i in range(n)))

    answers = asyncio.run(burst(4 * MAX_IN_FLIGHT))
    codes = [r.status_code for r in answers]
    assert set(codes) == {200, 503} and codes.count(200) >= MAX_IN_FLIGHT // 2, codes
    refused = next(r for r in answers if r.status_code == 503)
    assert refused.headers["retry-after"] == "1" and refused.json()["error"] == "overloaded"
    assert httpx.get(server["url"] + "/readyz", timeout=10).status_code == 200
