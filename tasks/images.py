"""Reading images the same way everywhere: training, evaluation, the service and monitoring."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

# Refuse decompression bombs outright instead of warning (PIL's default limit is ~89 Mpx).
Image.MAX_IMAGE_PIXELS = 64_000_000


def to_rgb(img: Image.Image) -> Image.Image:
    """EXIF-transpose and convert any mode (L, P, RGBA, CMYK, I;16, ...) to RGB."""
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grey: scale to 8 bits instead of clipping at 255.
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if arr.max() > 255 else 255.0
        img = Image.fromarray((arr / top * 255.0).round().astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


def open_rgb(path: str | Path) -> Image.Image:
    """Decode a file fully and return it as RGB (raises PIL/OSError errors on broken files)."""
    with Image.open(path) as img:
        img.load()
        return to_rgb(img)


def decode_upload(data: bytes) -> Image.Image:
    """Decode uploaded bytes to RGB; raises ValueError with a readable reason."""
    if not data:
        raise ValueError("the upload is empty")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return to_rgb(img)
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
