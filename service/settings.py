"""The service's settings: which model, where the traffic goes, how many workers and threads.

Read from the environment (service/service.py lists the variables) and from the served folder.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path

import bentoml
import psutil
from pydantic import Field

import tasks  # noqa: F401  (first: switches BentoML's telemetry off before bentoml is used)
from tasks.common.config import Params, Section, load_params
from tasks.common.paths import POINTER, STORE_ARCHIVES
from tasks.common.threads import cores
from tasks.model.registry import FOLLOW_ENV, check_in_store, current_model


class UncertainParams(Section):
    margin: float = Field(ge=0.0, le=1.0, description="served images with a top-two margin below this are kept; 0: none")
    max_mb: float = Field(gt=0.0, description="the kept images' disk cap")
    days: float = Field(gt=0.0, description="kept images older than this are deleted")


class AuditParams(Section):
    share: float = Field(ge=0.0, le=1.0, description="share of all served images kept for review at random; 0: none")
    max_mb: float = Field(gt=0.0, description="the audit images' disk cap")
    days: float = Field(gt=0.0, description="audit images older than this are deleted")


class ServiceSection(Section):
    """params.yaml's `service` section: read by the service only, so editing it re-runs no stage."""

    uncertain: UncertainParams
    audit: AuditParams = AuditParams(share=0.02, max_mb=256, days=90)  # params.yaml from before the audit


class ServiceParams(Params):
    service: ServiceSection


MODEL_ENV = "IMAGE_CLASSIFIER_MODEL"
TRAFFIC_ENV = "IMAGE_CLASSIFIER_TRAFFIC_DIR"
THREADS_ENV = "IMAGE_CLASSIFIER_MODEL_THREADS"
API_WORKERS_ENV = "IMAGE_CLASSIFIER_API_WORKERS"
RUNTIME_ENV = "IMAGE_CLASSIFIER_RUNTIME"


def model_tag() -> str:
    """The model to start with.

    Following production: the pointer's production model, else the tag the Bento was built with.
    Otherwise: the environment's choice, else the tag the Bento was built with, else the production
    model (tasks/model/registry.py), else the newest version. params.yaml is that of the served
    folder: the project root, or the copy a Bento carries.
    """
    built_with = getattr(bentoml.use_arguments(), "model", None)
    followed = follow_pointer()
    if followed:
        return current_model(followed) or built_with or f"{load_params().package.model_name}:latest"
    return (os.environ.get(MODEL_ENV) or built_with or current_model(launch_dir() / POINTER)
            or f"{load_params().package.model_name}:latest")


def follow_pointer() -> Path | None:
    """The pointer file to follow (IMAGE_CLASSIFIER_FOLLOW), or None for a fixed model."""
    value = os.environ.get(FOLLOW_ENV)
    if not value:
        return None
    path = Path(value).expanduser()
    return path if path.is_absolute() else launch_dir() / path


def model_path(tag: str) -> Path:
    """Where the local BentoML store keeps model `tag`'s files. A model this machine's store lacks
    comes from the archives beside the followed pointer (deploy/store, brought by `dvc pull`)."""
    pointer = follow_pointer()
    if pointer is not None:
        check_in_store(tag, archives=pointer.parent / STORE_ARCHIVES.name)
    return Path(bentoml.models.get(tag).path)


def api_workers() -> int:
    """API worker processes (IMAGE_CLASSIFIER_API_WORKERS, default 2).

    An API worker spends more CPU per request on HTTP, multipart parsing and logging than the
    model spends per image, so one API worker left the model worker waiting (docs/performance.md).
    """
    return int(os.environ.get(API_WORKERS_ENV) or 2)


def model_threads() -> int:
    """CPU threads for the forward pass: all cores but the one the API worker needs, unless set.

    Two processes each running one thread per core oversubscribe the machine: on 2 cores the
    forward pass costs 1.7 ms of CPU per image with one thread and 2.7 ms with two.
    """
    if os.environ.get(THREADS_ENV):
        return int(os.environ[THREADS_ENV])
    return cores()  # IMGCLF_THREADS, else every core this process may run on but one


def forced_runtime() -> str | None:
    """IMAGE_CLASSIFIER_RUNTIME=torch serves the PyTorch weights whatever runtime the model was packaged
    with (to compare, or to rule the runtime out); unset: the packaged runtime."""
    value = os.environ.get(RUNTIME_ENV) or None
    if value not in (None, "torch"):
        raise RuntimeError(f"{RUNTIME_ENV}={value!r}: only torch can be forced; unset it to serve the packaged runtime")
    return value


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


def review_settings() -> ServiceSection:
    """service.uncertain and service.audit of the served folder's params.yaml: which served images are kept
    for review."""
    return load_params(model=ServiceParams).service


def glibc():
    """The C library when it is glibc (its malloc tunables below), else None."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        libc.mallopt, libc.malloc_trim  # noqa: B018  (both exist only in glibc)
    except (OSError, AttributeError, TypeError):
        return None
    return libc


LIBC = glibc()


def limit_heap_growth() -> None:
    """At most two malloc arenas in this worker process, instead of up to eight per core.

    glibc gives each thread that allocates its own arena, and an arena keeps what is freed in it;
    the API workers run dozens of threads (decoding, the traffic log). With two, a server's memory
    grew 6% over its first 10,000 requests and about 2% over the next (docs/performance.md).
    """
    if LIBC is not None:
        LIBC.mallopt(-8, 2)  # M_ARENA_MAX, from glibc's malloc.h


def release_free_memory() -> None:
    """Give the heap's free pages back to the system (glibc's malloc_trim)."""
    if LIBC is not None:
        LIBC.malloc_trim(0)
