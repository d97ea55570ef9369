"""HTTP service that classifies uploaded images with the model bundle from the BentoML model store.

    POST /classify   multipart/form-data: one or more files in `images`, optional `top_k`

`bentoml serve` runs two services, each in its own worker process:

    ImageClassifier   the public API: checks and decodes uploads, preprocesses, logs the traffic
    ClassifierModel   the network; its batchable `predict` merges the images of concurrent
                      requests into one forward pass (adaptive batching)

Both load the bundle through `tasks.model.bundle`, so images are decoded, resized and normalized exactly
as in training and evaluation. Every classified image is logged with `bentoml.monitor` as one JSON
line of `tasks.monitoring.features.feature_rows` columns, which the monitor stage compares with its reference.

Settings, from the environment:
    IMAGE_CLASSIFIER_MODEL        model tag to serve; default: the tag the Bento was built with
                                  (`--arg model=...`), else the production model of
                                  deploy/production.json, else `<package.model_name>:latest`
    IMAGE_CLASSIFIER_TRAFFIC_DIR  folder of the traffic logs; default `monitor.traffic_dir` of
                                  params.yaml (data/traffic); relative to where `bentoml serve` started
    IMAGE_CLASSIFIER_TOKEN        a bearer token every request but the health checks must carry;
    IMAGE_CLASSIFIER_TOKEN_FILE   or a file holding it (service/access.py). Unset: no token needed
    IMAGE_CLASSIFIER_MAX_IN_FLIGHT  requests held at once (default 128); one more gets 503 + Retry-After
"""
import logging
import os
import threading
from pathlib import Path, PurePosixPath
from typing import Optional

import aiohttp
import anyio.to_thread
import bentoml
import numpy as np
import psutil
import torch
from bentoml.models import BentoModel
from PIL import Image
from pydantic import BaseModel, Field, ValidationError
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import PydanticCustomError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request

import tasks  # noqa: F401  (first: switches BentoML's telemetry off before bentoml is imported)
from service.access import BearerToken, configured_token
from service.admission import Admission, configured_limit
from service.coalesce import Coalescer
from tasks.common.config import load_params
from tasks.common.paths import POINTER
from tasks.data.images import decode_upload, to_rgb
from tasks.model.bundle import load_bundle, preprocess, read_meta
from tasks.model.registry import current_model
from tasks.monitoring.features import FEATURE_COLUMNS, feature_rows

MODEL_ENV = "IMAGE_CLASSIFIER_MODEL"
TRAFFIC_ENV = "IMAGE_CLASSIFIER_TRAFFIC_DIR"
MONITOR_NAME = "image_classifier"  # logs go to <traffic dir>/image_classifier/data/data.<worker>.log
DEFAULT_TOP_K = 3
MAX_IMAGES = 64  # per request; also the largest batch one forward pass takes
MAX_LATENCY_MS = 5000  # overload: a request that would wait longer gets 503 instead of piling up
CONNECTION_ATTEMPTS = 3
COALESCED_CALLS = 1  # calls to the model worker in flight at once: one computes while the next is sent

logger = logging.getLogger("bentoml.image_classifier")


def model_tag() -> str:
    """The environment's choice, else the tag the Bento was built with, else the production model
    (tasks/model/registry.py), else the newest version.

    params.yaml is that of the served folder: the project root, or the copy a Bento carries.
    """
    built_with = getattr(bentoml.use_arguments(), "model", None)
    return (os.environ.get(MODEL_ENV) or built_with or current_model(launch_dir() / POINTER)
            or f"{load_params().package.model_name}:latest")


def launch_dir() -> Path:
    """The folder `bentoml serve` was started in.

    Serving a built Bento, BentoML moves each worker into the Bento's copy of the sources
    (`<bento>/src`, next to bento.yaml) before it imports this module; the server process that
    started the worker stays where it was started.
    """
    cwd = Path.cwd()
    if (cwd.parent / "bento.yaml").is_file():
        try:
            return Path(psutil.Process().parent().cwd())
        except (psutil.Error, AttributeError):  # no parent (None) or not ours to inspect
            pass
    return cwd


def traffic_dir() -> Path:
    folder = Path(os.environ.get(TRAFFIC_ENV) or load_params().monitor.traffic_dir).expanduser()
    return folder if folder.is_absolute() else launch_dir() / folder


MODEL_TAG = model_tag()


# ---------------------------------------------------------------- request parsing and errors


def invalid(*problems: tuple[tuple, str]) -> ValidationError:
    """A pydantic ValidationError: BentoML answers it with 400 and {"error", "detail": [{loc, msg}]}.

    Every input problem takes this one shape, whether pydantic or this module found it.
    """
    return ValidationError.from_exception_data(
        "ClassifyInput",
        [
            {"type": PydanticCustomError("invalid_input", "{reason}", {"reason": reason}), "loc": loc, "input": None}
            for loc, reason in problems
        ],
    )


def upload_name(upload: UploadFile, index: int) -> str:
    """The client's file name without any folders, for the response and nothing else."""
    name = PurePosixPath((upload.filename or "").replace("\\", "/")).name
    return name if name not in ("", ".", "..") else f"image_{index}"


def decode_all(names: list[str], blobs: list[bytes]) -> list[Image.Image]:
    images, problems = [], []
    for i, (name, blob) in enumerate(zip(names, blobs)):
        try:
            images.append(decode_upload(blob))
        except ValueError as err:
            problems.append((("images", i), f"{name}: {err}"))
    if problems:
        raise invalid(*problems)
    return images


async def parse_form(request: Request) -> dict:
    """Read the multipart form strictly: only `images` (files) and `top_k`, nothing fetched.

    BentoML's own multipart parsing downloads any text value of a file field as a URL and lets a
    malformed body end in a 500; this parser refuses both with a 400.
    """
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise invalid((("body",), "send multipart/form-data with one or more image files in field 'images'"))
    try:
        form = await request.form(max_files=MAX_IMAGES, max_fields=8)
    except (HTTPException, MultiPartException, ValueError, KeyError) as err:
        reason = getattr(err, "detail", None) or getattr(err, "message", None) or str(err) or type(err).__name__
        raise invalid((("body",), f"unreadable multipart body: {reason}")) from None

    problems = [
        ((key,), f"unknown field {key!r}; send image files in 'images' and optionally 'top_k'")
        for key in form.keys()
        if key not in ("images", "top_k")
    ]
    uploads = form.getlist("images")
    if not uploads:
        problems.append((("images",), "no images; attach one or more image files in field 'images'"))
    problems += [
        (("images", i), "must be a file upload, not a text value")
        for i, upload in enumerate(uploads)
        if not isinstance(upload, UploadFile)
    ]
    top_k = form.getlist("top_k")
    if len(top_k) > 1:
        problems.append((("top_k",), "give top_k once"))
    elif top_k and isinstance(top_k[0], UploadFile):
        problems.append((("top_k",), "must be a number, not a file"))
    if problems:
        raise invalid(*problems)

    names = [upload_name(upload, i) for i, upload in enumerate(uploads)]
    blobs = [await upload.read() for upload in uploads]
    images = await anyio.to_thread.run_sync(decode_all, names, blobs)  # decoding is CPU work
    return {"images": images, "top_k": top_k[0] if top_k else None, "filenames": names}


class ClassifyInput(bentoml.IODescriptor):
    """multipart/form-data with the images as files; `top_k` as a plain form field."""

    images: list[Image.Image] = Field(description="image files (PNG, JPEG, ...); repeat the field per image")
    top_k: Optional[int] = Field(
        None, ge=1, description=f"labels per image, best first: 1 to the number of classes (default {DEFAULT_TOP_K})"
    )
    filenames: SkipJsonSchema[list[str]] = Field(default_factory=list)  # filled from the uploads

    @classmethod
    async def from_http_request(cls, request: Request, serde) -> "ClassifyInput":
        return cls.model_validate(await parse_form(request))


class LabelScore(BaseModel):
    label: str
    probability: float


class ImageResult(BaseModel):
    filename: str
    predictions: list[LabelScore] = Field(description="top_k labels, most probable first")


class ClassifyOutput(BaseModel):
    model: str = Field(description="tag of the model that answered")
    results: list[ImageResult] = Field(description="one per uploaded image, in upload order")


# ---------------------------------------------------------------- services


@bentoml.service(workers=1, traffic={"timeout": 60})
class ClassifierModel:
    """The network alone, so that BentoML can batch the calls of concurrent requests."""

    bento_model = BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        self.bundle = load_bundle(self.bento_model.path, device="cuda" if torch.cuda.is_available() else "cpu")

    @bentoml.api(batchable=True, max_batch_size=MAX_IMAGES, max_latency_ms=MAX_LATENCY_MS)
    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Preprocessed images (N, 3, S, S) -> (N, classes + embedding dims): calibrated probabilities
        (with the bundle's test-time augmentation), then the embedding.

        One array out, because the batcher splits a single array back into the callers' shares.
        """
        logger.debug("forward pass over a batch of %d images", len(batch))
        logits, features = self.bundle.logits_and_features(torch.tensor(batch))  # a copy: arrives read-only
        probs = self.bundle.probabilities(logits)
        return np.concatenate([probs, self.bundle.project(features)], axis=1).astype(np.float32)


# Loopback unless `bentoml serve --host 0.0.0.0` says otherwise: see service/access.py for a token.
@bentoml.service(workers=1, traffic={"timeout": 60}, http={"host": "127.0.0.1"})
class ImageClassifier:
    """Classifies uploaded images; every image is logged for drift monitoring."""

    bento_model = BentoModel(MODEL_TAG)
    classifier = bentoml.depends(ClassifierModel)

    def __init__(self) -> None:
        # Only the bundle's sidecar is needed here: preprocessing and class names, as in training.
        # The weights live in ClassifierModel.
        self.meta = read_meta(self.bento_model.path)
        self.labels = list(self.meta["labels"])
        self.traffic_dir = traffic_dir()
        self.log_lock = threading.Lock()  # bentoml.monitor sets its log files up on first use
        self.coalesce = Coalescer(self.infer, MAX_IMAGES, calls=COALESCED_CALLS)
        logger.info("serving %s; traffic logs under %s", self.bento_model.tag, self.traffic_dir)

    @bentoml.api(route="/classify", input_spec=ClassifyInput)
    async def classify(
        self, images: list[Image.Image], top_k: Optional[int] = None, filenames: Optional[list[str]] = None
    ) -> ClassifyOutput:
        """Top-k labels with probabilities for each uploaded image."""
        labels = self.labels
        if top_k is None:
            top_k = min(DEFAULT_TOP_K, len(labels))
        elif not 1 <= top_k <= len(labels):
            raise invalid((("top_k",), f"must be between 1 and {len(labels)}, the number of classes"))
        names = filenames or [f"image_{i}" for i in range(len(images))]

        meta = self.meta

        def to_batch() -> tuple[list[Image.Image], np.ndarray]:
            # RGB as the clean stage made the training images: upright, transparency on its background.
            rgb = [to_rgb(img, tuple(meta["background"])) for img in images]
            return rgb, preprocess(rgb, meta["image_size"], meta["mean"], meta["std"], meta["crop_pct"]).numpy()

        rgb, batch = await anyio.to_thread.run_sync(to_batch)
        out = await self.coalesce(batch)
        probs, embeddings = out[:, : len(labels)], out[:, len(labels) :]

        await anyio.to_thread.run_sync(self.log_traffic, rgb, probs, embeddings)
        results = []
        for name, p in zip(names, probs):
            best = np.argsort(-p)[:top_k]
            results.append(
                ImageResult(
                    filename=name,
                    predictions=[LabelScore(label=labels[i], probability=round(float(p[i]), 6)) for i in best],
                )
            )
        return ClassifyOutput(model=str(self.bento_model.tag), results=results)

    async def infer(self, batch: np.ndarray) -> np.ndarray:
        """ClassifierModel.predict, tried up to three times when the connection drops.

        BentoML's client to a dependency replaces its connection pool every 100 requests and
        closes the old one with the requests still on it (bentoml 1.4.39); those are sent again.
        """
        for attempt in range(1, CONNECTION_ATTEMPTS + 1):
            try:
                return await self.classifier.to_async.predict(batch)
            except aiohttp.ClientConnectionError:
                if attempt == CONNECTION_ATTEMPTS:
                    raise
                logger.debug("connection to ClassifierModel dropped; sending the batch again")

    def log_traffic(self, images: list[Image.Image], probs: np.ndarray, embeddings: np.ndarray) -> None:
        """One JSON line per image: the feature_rows columns, plus timestamp and request id."""
        options = {"log_path": str(self.traffic_dir)}
        try:
            with self.log_lock:
                # One record per image: a record of several values per column makes BentoML warn
                # about duplicate columns on the first request.
                for row in feature_rows(images, probs, embeddings, self.labels):
                    with bentoml.monitor(MONITOR_NAME, monitor_options=options) as mon:
                        for column in FEATURE_COLUMNS:
                            mon.log(row[column], column, "feature", "numerical")
                        mon.log(row["prediction"], "prediction", "prediction", "categorical")
                        mon.log(row["confidence"], "confidence", "prediction", "numerical")
        except OSError:  # a full or read-only disk must not cost the client its answer
            logger.exception("could not write the traffic log under %s", self.traffic_dir)


# Outermost first. With IMAGE_CLASSIFIER_TOKEN(_FILE) set, every route but the health checks needs the
# token (service/access.py); then at most IMAGE_CLASSIFIER_MAX_IN_FLIGHT requests at once, the next
# gets 503 with Retry-After (service/admission.py).
ImageClassifier.add_asgi_middleware(BearerToken, token=configured_token())
ImageClassifier.add_asgi_middleware(Admission, limit=configured_limit())
