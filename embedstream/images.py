"""Image input checks, shared by the gateway (before queueing) and workers (before decoding).

The gateway refuses an image by its bytes before anything is queued: the format
allowlist is read from the magic bytes, the pixel count from the header alone
(so a decompression bomb, a small file declaring 20,000 x 20,000 pixels, costs
microseconds), and only then is the image decoded once, cheaply (JPEG at 1/8
scale), to catch truncated or corrupt data. Workers run the same header checks
again on whatever they dequeue, so a forged entry cannot make them decode a bomb.
"""

from __future__ import annotations

import io
from typing import Any

#: Formats accepted, by their magic bytes.
FORMATS = ("JPEG", "PNG", "WEBP")


class ImageError(ValueError):
    """An image input that is refused; the message says why, for the caller."""


def sniff(data: bytes) -> str:
    """The format ``data`` claims by its magic bytes, or raise :class:`ImageError`."""
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    head = data[:256].lstrip().lower()
    if head.startswith((b"<?xml", b"<svg")) or b"<svg" in head:
        raise ImageError("SVG is not accepted; send JPEG, PNG or WebP")
    raise ImageError("not a JPEG, PNG or WebP image")


def open_checked(data: bytes, max_bytes: int, max_pixels: int) -> Any:
    """A lazily decoded PIL image whose size and format passed the limits."""
    from PIL import Image

    # Our pixel limit, checked right after the header is read, replaces
    # Pillow's (which only warns below 2x its own) in this process.
    Image.MAX_IMAGE_PIXELS = None
    if not data:
        raise ImageError("empty image")
    if len(data) > max_bytes:
        raise ImageError(f"{len(data)} bytes exceed the limit of {max_bytes} bytes")
    fmt = sniff(data)
    try:
        image = Image.open(io.BytesIO(data), formats=[fmt])
    except Exception as exc:  # Pillow raises many types for bad headers
        raise ImageError(f"unreadable {fmt} header ({type(exc).__name__})") from None
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageError(f"declares an empty size {width}x{height}")
    if width * height > max_pixels:
        raise ImageError(f"{width}x{height} pixels exceed the limit of {max_pixels} pixels")
    return image


def verify(data: bytes, max_bytes: int, max_pixels: int) -> tuple[str, int, int]:
    """Check ``data`` fully (header, then a cheap decode); its format, width and height."""
    image = open_checked(data, max_bytes, max_pixels)
    fmt, (width, height) = image.format, image.size
    try:
        if fmt == "JPEG":
            image.draft("RGB", (max(1, width // 8), max(1, height // 8)))
        image.load()
    except Exception as exc:
        raise ImageError(f"corrupt or truncated {fmt} data ({type(exc).__name__}: {exc})") from None
    finally:
        image.close()
    return str(fmt), width, height


def decode(data: bytes, max_bytes: int, max_pixels: int) -> Any:
    """The image as an RGB PIL image with its EXIF orientation applied."""
    from PIL import ImageOps

    image = open_checked(data, max_bytes, max_pixels)
    try:
        image.load()
        upright = ImageOps.exif_transpose(image)
        return upright.convert("RGB")
    except ImageError:
        raise
    except Exception as exc:
        raise ImageError(f"corrupt or truncated {image.format} data ({type(exc).__name__})") from None
