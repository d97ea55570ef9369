"""HTTP service that classifies uploaded images with the model bundle from the BentoML model store.

    POST /classify   multipart/form-data: one or more files in `images`, optional `top_k`

`bentoml serve` runs two services in worker processes of their own:

    ImageClassifier   the public API, two workers by default: checks and decodes uploads (service/uploads.py),
                      batches the images of concurrent requests (service/coalesce.py), preprocesses
                      each batch, logs the traffic
    ClassifierModel   the network, one worker: a forward pass per batch, for the model the API names, in
                      the runtime the model was packaged with (tasks/model/served.py: ONNX Runtime
                      fp32 or int8, or PyTorch; PyTorch again if that runtime cannot load, with one
                      log line saying why)

Images are resized and normalized by tasks/model/preprocess.py, as in evaluation and monitoring. Neither
service imports PyTorch: only a model worker whose model runs in PyTorch loads it, so the API workers
stay small (docs/serving.md has the memory). Every classified image is logged with `bentoml.monitor` as one JSON
line of `tasks.monitoring.features.feature_rows` columns, which the monitor stage compares with its reference.
A random share of all images (service.audit.share: the audit sample, which measures live accuracy) and, of
the rest, those the model is least sure of (top-two margin below service.uncertain.margin) are also kept
as files for review, each queue within its own disk cap and retention time (tasks/labels/queue.py).

Following production: with IMAGE_CLASSIFIER_FOLLOW set to deploy/production.json, the API checks the
file every few seconds; when it names another model, the model worker loads that model and the API
switches to it between requests. Requests already under way finish on the model they started with,
and a model that fails to load is logged and never served (docs/serving.md).

Settings, from the environment:
    IMAGE_CLASSIFIER_MODEL        model tag to serve; default: the tag the Bento was built with
                                  (`--arg model=...`), else the production model of
                                  deploy/production.json, else `<package.model_name>:latest`
    IMAGE_CLASSIFIER_FOLLOW       path of deploy/production.json: serve its production model and
                                  switch to each new one (relative to where `bentoml serve` started)
    IMAGE_CLASSIFIER_MODEL_THREADS  the model worker's CPU threads (default: all cores but one)
    IMAGE_CLASSIFIER_RUNTIME      torch: run the PyTorch weights, not the runtime the model was packaged with
    IMAGE_CLASSIFIER_API_WORKERS  API worker processes (default 2); each follows production alone
    IMAGE_CLASSIFIER_TRAFFIC_DIR  folder of the traffic logs; default `monitor.traffic_dir` of
                                  params.yaml (data/traffic); relative to where `bentoml serve` started
    IMAGE_CLASSIFIER_TOKEN        a bearer token every request but the health checks must carry;
    IMAGE_CLASSIFIER_TOKEN_FILE   or a file holding it (service/access.py). Unset: no token needed
    IMAGE_CLASSIFIER_MAX_IN_FLIGHT  requests held at once per API worker (default 64); one more gets 503

A model worker that is gone (killed: BentoML starts another, which takes a few seconds) or does not
answer is waited for MODEL_WAIT_S at most; then the requests get 503 with Retry-After and
{"error": "model_unavailable", ...}, never another 5xx nor a wait to the 60 s timeout
(benchmarks/service_faults.py measures it).
"""
import asyncio
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import aiohttp
import anyio.to_thread
import bentoml
import numpy as np
from bentoml.models import BentoModel
from PIL import Image
from starlette.responses import JSONResponse

import tasks  # noqa: F401  (first: switches BentoML's telemetry off before bentoml is imported)
from service.access import BearerToken, configured_token
from service.admission import RETRY_AFTER_S, Admission, configured_limit
from service.coalesce import Coalescer
from service.production import PointerWatch
from service.settings import (
    api_workers,
    follow_pointer,
    forced_runtime,
    limit_heap_growth,
    model_path,
    model_tag,
    model_threads,
    release_free_memory,
    review_settings,
    traffic_dir,
)
from service.uploads import DEFAULT_TOP_K, MAX_IMAGES, ClassifyInput, ClassifyOutput, ImageResult, LabelScore, invalid
from tasks.common.config import UserError
from tasks.data.images import to_rgb
from tasks.labels.queue import AUDIT_DIR, QUEUE_DIR, audit_dir, draw_audit, keep, prune, queue_dir
from tasks.labels.uncertainty import margin
from tasks.model.meta import read_meta
from tasks.model.preprocess import preprocess_array
from tasks.model.served import Classifier, load_classifier
from tasks.monitoring.features import FEATURE_COLUMNS, feature_rows

MONITOR_NAME = "image_classifier"  # logs go to <traffic dir>/image_classifier/data/data.<worker>.log
CONNECTION_ATTEMPTS = 3
COALESCED_CALLS = 1  # batches in flight at once: more measured slower on 2 cores (docs/performance.md)
FOLLOW_SECONDS = 2.0  # how often a following service looks at the pointer file
MODELS_KEPT = 3  # models the model worker holds: production, and those requests under way may still use
TRIM_EVERY = 50  # batches between two malloc_trim calls in the model worker (about 4 ms each)
PRUNE_EVERY = 100  # images kept for review between two prunings of the review queue
# The longest wait for the model worker's answer to one batch. A forward pass of 64 images takes about 0.1 s here
# and a killed model worker is back in 5-8 s (docs/performance.md, benchmarks/service_faults.py); twice this
# still fits in the 60 s request timeout, since a request may first wait for the batch ahead of its own.
MODEL_WAIT_S = 20.0
MODEL_UNAVAILABLE = "the model worker is restarting or not answering; retry in a few seconds"

logger = logging.getLogger("bentoml.image_classifier")

limit_heap_growth()
MODEL_TAG = model_tag()
FORCED_RUNTIME = forced_runtime()  # checked here: a wrong value stops `bentoml serve` at once


# ---------------------------------------------------------------- services


BATCH_SIZES = bentoml.metrics.Histogram(
    name="image_classifier_batch_images",
    documentation="images per forward pass: concurrent requests share one (service/coalesce.py)",
    buckets=(1, 2, 4, 8, 16, 32, 64),
)


@bentoml.service(workers=1, traffic={"timeout": 60})
class ClassifierModel:
    """The network alone, in its own process: the API's event loop never waits on a forward pass."""

    bento_model = BentoModel(MODEL_TAG)  # so that the Bento carries the model it was built with

    def __init__(self) -> None:
        self.models: dict[str, Classifier] = {}  # tag -> model in its runtime, oldest first
        self.batches = 0
        self.classifier_for(str(self.bento_model.tag))

    def classifier_for(self, tag: str) -> Classifier:
        classifier = self.models.get(tag)
        if classifier is None:
            path = self.bento_model.path if tag == str(self.bento_model.tag) else model_path(tag)
            classifier = load_classifier(path, threads=model_threads(), runtime=FORCED_RUNTIME)
            if classifier.fallback:
                logger.warning("%s: %s", tag, classifier.fallback)
            size = int(classifier.meta["image_size"])
            classifier.predict(np.zeros((1, 3, size, size), np.float32))  # the network does run
            self.models[tag] = classifier
            logger.info("loaded %s (runtime %s)", tag, classifier.runtime)
            while len(self.models) > MODELS_KEPT:
                self.models.pop(next(iter(self.models)))
        return classifier

    @bentoml.api
    def load(self, model: str) -> str:
        """Load `model` from the BentoML store before it is served: '' once ready, else why it cannot be."""
        try:
            self.classifier_for(model)
        except Exception as err:  # whatever the cause, the answer is "do not switch", with the reason
            return f"{type(err).__name__}: {err}"
        return ""

    @bentoml.api
    def predict(self, batch: np.ndarray, model: str) -> np.ndarray:
        """Preprocessed images (N, 3, S, S) -> (N, classes + embedding dims) for `model`: calibrated
        probabilities (with the bundle's test-time augmentation), then the embedding."""
        logger.debug("forward pass over a batch of %d images", len(batch))
        self.batches += 1
        if self.batches % TRIM_EVERY == 0:  # batches of every size leave freed blocks scattered in the heap
            release_free_memory()
        probs, embeddings = self.classifier_for(model).predict(np.asarray(batch))
        return np.concatenate([probs, embeddings], axis=1).astype(np.float32)


class ModelUnavailable(Exception):
    """The model worker could not be reached, or did not answer within MODEL_WAIT_S."""


@dataclass
class Served:
    """One model as the API serves it; a request keeps the one it started with to the end."""

    tag: str
    meta: dict
    coalesce: Coalescer

    @property
    def labels(self) -> list[str]:
        return list(self.meta["labels"])


# Loopback unless `bentoml serve --host 0.0.0.0` says otherwise: see service/access.py for a token.
@bentoml.service(workers=api_workers(), traffic={"timeout": 60}, http={"host": "127.0.0.1"})
class ImageClassifier:
    """Classifies uploaded images; every image is logged for drift monitoring."""

    bento_model = BentoModel(MODEL_TAG)
    classifier = bentoml.depends(ClassifierModel)

    def __init__(self) -> None:
        self.traffic_dir = traffic_dir()
        self.log_lock = threading.Lock()  # bentoml.monitor sets its log files up on first use
        self.queues = {QUEUE_DIR: queue_dir(self.traffic_dir), AUDIT_DIR: audit_dir(self.traffic_dir)}
        self.review, self.audit_draws = review_settings(), np.random.default_rng()
        self.kept_since_prune = PRUNE_EVERY  # prunes on the first image kept
        self.pointer = follow_pointer()
        self.model_down_until = 0.0  # monotonic time until which batches fail at once (see infer)
        # Only the bundle's sidecar is needed here: preprocessing and class names, as in training.
        self.served = self.serving(str(self.bento_model.tag), self.bento_model.path)
        following = f"; following {self.pointer}" if self.pointer else ""
        logger.info("serving %s; traffic logs under %s%s", self.served.tag, self.traffic_dir, following)

    def serving(self, tag: str, path: str | Path) -> Served:
        meta = read_meta(path)

        async def infer(images: list[Image.Image]) -> np.ndarray:
            return await self.infer(tag, meta, images)

        return Served(tag, meta, Coalescer(infer, MAX_IMAGES, calls=COALESCED_CALLS, on_batch=BATCH_SIZES.observe))

    @bentoml.api(route="/classify", input_spec=ClassifyInput)
    async def classify(
        self, images: list[Image.Image], top_k: Optional[int] = None, filenames: Optional[list[str]] = None
    ) -> ClassifyOutput:
        """Top-k labels with probabilities for each uploaded image."""
        served = self.served
        labels = served.labels
        if top_k is None:
            top_k = min(DEFAULT_TOP_K, len(labels))
        elif not 1 <= top_k <= len(labels):
            raise invalid((("top_k",), f"must be between 1 and {len(labels)}, the number of classes"))
        names = filenames or [f"image_{i}" for i in range(len(images))]

        # RGB as the clean stage made the training images: upright, transparency on its background.
        background = tuple(served.meta["background"])
        rgb = await anyio.to_thread.run_sync(lambda: [to_rgb(img, background) for img in images])
        try:
            out = await served.coalesce(rgb)
        except ModelUnavailable as err:  # Admission adds Retry-After to every 503
            return JSONResponse({"error": "model_unavailable", "detail": str(err)}, status_code=503)
        probs, embeddings = out[:, : len(labels)], out[:, len(labels) :]

        await anyio.to_thread.run_sync(self.log_traffic, rgb, probs, embeddings, labels)
        if self.review.uncertain.margin > 0 or self.review.audit.share > 0:
            await anyio.to_thread.run_sync(self.keep_for_review, rgb, probs, labels, served.tag, names)
        results = []
        for name, p in zip(names, probs):
            best = np.argsort(-p)[:top_k]
            results.append(
                ImageResult(
                    filename=name,
                    predictions=[LabelScore(label=labels[i], probability=round(float(p[i]), 6)) for i in best],
                )
            )
        return ClassifyOutput(model=served.tag, results=results)

    async def infer(self, tag: str, meta: dict, images: list[Image.Image]) -> np.ndarray:
        """One batch: preprocessed here, classified by ClassifierModel, tried up to three times when
        the connection drops; ModelUnavailable if the model worker does not answer within MODEL_WAIT_S.

        BentoML's client to a dependency replaces its connection pool every 100 requests and
        closes the old one with the requests still on it (bentoml 1.4.39); those are sent again.
        So is a batch whose model worker was killed: the server keeps the worker's socket open, so
        the batch waits there for the worker BentoML starts instead, and is answered by it.
        """
        if time.monotonic() < self.model_down_until:  # the batches queued behind a failed one fail at once
            raise ModelUnavailable(MODEL_UNAVAILABLE)
        batch = await anyio.to_thread.run_sync(
            lambda: preprocess_array(images, meta["image_size"], meta["mean"], meta["std"], meta["crop_pct"]))
        try:
            async with asyncio.timeout(MODEL_WAIT_S):
                for attempt in range(1, CONNECTION_ATTEMPTS + 1):
                    try:
                        return await self.classifier.to_async.predict(batch=batch, model=tag)
                    except aiohttp.ClientConnectionError:
                        if attempt == CONNECTION_ATTEMPTS:
                            raise
                        logger.debug("connection to ClassifierModel dropped; sending the batch again")
        except (aiohttp.ClientError, TimeoutError) as err:
            self.model_down_until = time.monotonic() + RETRY_AFTER_S  # the clients come back after that; so do we
            logger.warning("ClassifierModel unavailable (%s); answering 503", type(err).__name__)
            raise ModelUnavailable(MODEL_UNAVAILABLE) from err

    # ------------------------------------------------------------ following production

    @bentoml.on_startup
    async def start_following(self) -> None:
        if self.pointer:
            self.follower = asyncio.get_running_loop().create_task(self.follow_production())

    async def follow_production(self) -> None:
        """Every FOLLOW_SECONDS: if the pointer file changed and names another model, switch to it."""
        watch = PointerWatch(self.pointer)
        while True:
            await asyncio.sleep(FOLLOW_SECONDS)
            try:
                if watch.changed():
                    await self.switch_to(watch.production_model())
            except UserError as err:
                logger.error("production pointer: %s; still serving %s", err, self.served.tag)
            except Exception:  # the service goes on serving whatever happens here
                logger.exception("following production failed; still serving %s", self.served.tag)

    async def switch_to(self, tag: str | None) -> None:
        """Serve `tag` from the next request on, once the model worker has it loaded; if it cannot be
        loaded, keep the model being served and log why."""
        current = self.served.tag
        if tag is None:
            logger.warning("%s names no production model; still serving %s", self.pointer, current)
            return
        if tag == current:
            return
        problem = await self.classifier.to_async.load(model=tag)
        if not problem:
            try:
                served = await anyio.to_thread.run_sync(lambda: self.serving(tag, model_path(tag)))
            except Exception as err:
                problem = f"{type(err).__name__}: {err}"
        if problem:
            logger.error("production model %s could not be loaded, still serving %s: %s", tag, current, problem)
            return
        self.served = served
        logger.info("production changed: serving %s (was %s)", tag, current)

    def log_traffic(self, images: list[Image.Image], probs: np.ndarray, embeddings: np.ndarray,
                    labels: list[str]) -> None:
        """One JSON line per image: the feature_rows columns, plus timestamp and request id."""
        options = {"log_path": str(self.traffic_dir)}
        try:
            with self.log_lock:
                # One record per image: a record of several values per column makes BentoML warn
                # about duplicate columns on the first request.
                for row in feature_rows(images, probs, embeddings, labels):
                    with bentoml.monitor(MONITOR_NAME, monitor_options=options) as mon:
                        for column in FEATURE_COLUMNS:
                            mon.log(row[column], column, "feature", "numerical")
                        mon.log(row["prediction"], "prediction", "prediction", "categorical")
                        mon.log(row["confidence"], "confidence", "prediction", "numerical")
        except OSError:  # a full or read-only disk must not cost the client its answer
            logger.exception("could not write the traffic log under %s", self.traffic_dir)

    def keep_for_review(self, images: list[Image.Image], probs: np.ndarray, labels: list[str], tag: str,
                        names: list[str]) -> None:
        """Keep a random audit share of the images, and of the rest those the model was least sure of
        (tasks/labels/queue.py); prune the queues now and then."""
        try:
            audit = draw_audit(len(images), self.review.audit.share, self.audit_draws)
            chosen = {AUDIT_DIR: audit, QUEUE_DIR: (margin(probs) < self.review.uncertain.margin) & ~audit}
            for kind, folder in self.queues.items():
                self.kept_since_prune += len(keep(folder, images, probs, labels, tag, names, chosen[kind], kind))
            if self.kept_since_prune >= PRUNE_EVERY:
                self.kept_since_prune = 0
                for kind, folder in self.queues.items():
                    bounds = self.review.audit if kind == AUDIT_DIR else self.review.uncertain
                    prune(folder, bounds.max_mb, bounds.days)
        except OSError:  # a full or read-only disk must not cost the client its answer
            logger.exception("could not keep images for review under %s", self.traffic_dir)


# Outermost first. With IMAGE_CLASSIFIER_TOKEN(_FILE) set, every route but the health checks needs the
# token (service/access.py); then at most IMAGE_CLASSIFIER_MAX_IN_FLIGHT requests at once, the next
# gets 503 with Retry-After (service/admission.py).
ImageClassifier.add_asgi_middleware(BearerToken, token=configured_token())
ImageClassifier.add_asgi_middleware(Admission, limit=configured_limit())
