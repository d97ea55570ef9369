"""The request and the answer of POST /classify: a strict multipart parser, and every input problem
as a 400 with a JSON body that names it (never a 5xx)."""
from __future__ import annotations

from pathlib import PurePosixPath
from typing import Optional

import anyio.to_thread
import bentoml
from PIL import Image
from pydantic import BaseModel, Field, ValidationError
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import PydanticCustomError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request

from tasks.data.images import decode_upload

DEFAULT_TOP_K = 3
MAX_IMAGES = 64  # per request; also the largest batch one forward pass takes


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
