"""Reading images the same way everywhere: cleaning, training, evaluation, the service and monitoring."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms, ImageOps

# Refuse decompression bombs outright instead of warning (PIL's default limit is ~89 Mpx).
Image.MAX_IMAGE_PIXELS = 64_000_000

WHITE = (255, 255, 255)
SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


def _to_srgb(img: Image.Image) -> Image.Image | None:
    """Convert through the embedded ICC profile (CMYK print profiles, Adobe RGB, Display P3).

    Returns None when there is no usable profile; the caller then converts without one.
    """
    icc = img.info.get("icc_profile")
    if not icc or img.mode not in ("RGB", "CMYK"):
        return None
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        return ImageCms.profileToProfile(img, source, SRGB, outputMode="RGB")
    except (ImageCms.PyCMSError, OSError, ValueError):
        return None  # a broken profile is common enough not to lose the image over it


def to_8bit(img: Image.Image) -> Image.Image:
    """16-bit and 32-bit grey (I;16*, I, F) scaled to 8-bit L instead of clipped; other modes as they are."""
    if img.mode.startswith("I;16"):
        return Image.fromarray((np.asarray(img, dtype=np.float32) / 257.0).round().astype(np.uint8), "L")
    if img.mode in ("I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if arr.max() > 255 else 255.0  # 32-bit modes hold 16-bit data from most decoders
        return Image.fromarray((arr.clip(0, top) / top * 255.0).round().astype(np.uint8), "L")
    return img


def to_rgb(img: Image.Image, background: tuple[int, int, int] = WHITE) -> Image.Image:
    """EXIF-transpose and convert any mode to 8-bit sRGB.

    Transparent pixels (RGBA, LA, palette with transparency) are composited on `background`;
    16-bit grey is scaled to 8 bits, not clipped; CMYK and tagged RGB go through their ICC profile.
    """
    img = to_8bit(ImageOps.exif_transpose(img))
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (*background, 255)), rgba)
    return _to_srgb(img) or img.convert("RGB")


def shrink(img: Image.Image, max_side: int) -> Image.Image:
    """Downscale so that the longer side is at most max_side (0: keep the size)."""
    if max_side and max(img.size) > max_side:
        img = img.copy()
        img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS, reducing_gap=3.0)
    return img


def open_rgb(path: str | Path, background: tuple[int, int, int] = WHITE) -> Image.Image:
    """Decode a file fully and return it as RGB (raises PIL/OSError errors on broken files)."""
    with Image.open(path) as img:
        img.load()
        return to_rgb(img, background)


def decode_upload(data: bytes) -> Image.Image:
    """Decode uploaded bytes fully (mode unchanged: see to_rgb); raises ValueError with a readable reason."""
    if not data:
        raise ValueError("the upload is empty")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return img.copy()
    except Image.DecompressionBombError:
        raise ValueError("the image has too many pixels (over 64 megapixels)") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"not a readable image ({err.__class__.__name__})") from None


def image_stats(img: Image.Image) -> dict[str, float]:
    """Cheap per-image properties that drift when the camera, lighting or source changes."""
    grey = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    # Variance of a 4-neighbour Laplacian: a standard focus/sharpness measure.
    lap = (
        -4 * grey[1:-1, 1:-1] + grey[:-2, 1:-1] + grey[2:, 1:-1] + grey[1:-1, :-2] + grey[1:-1, 2:]
        if min(grey.shape) >= 3
        else np.zeros(1, dtype=np.float32)
    )
    return {
        "brightness": float(grey.mean()),
        "contrast": float(grey.std()),
        "sharpness": float(lap.var()),
        "width": float(img.width),
        "height": float(img.height),
    }
