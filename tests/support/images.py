"""Hostile and ordinary image files for tests, made on the fly."""

from __future__ import annotations

import io
import struct
import zlib
from typing import Any

import numpy as np
from PIL import Image


def png_bomb(width: int = 20_000, height: int = 20_000) -> bytes:
    """A valid 1-bit PNG of width x height blank pixels: 400 million pixels in ~60 KB."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\x00" * (1 + (width + 7) // 8)
    packer = zlib.compressobj(9)
    data = b"".join(packer.compress(row * 1000) for _ in range(height // 1000)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def picture(seed: int, size: tuple[int, int] = (48, 40), fmt: str = "PNG", **save: Any) -> bytes:
    """An ordinary image of random pixels (distinct per seed), encoded as ``fmt``."""
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format=fmt, **save)
    return out.getvalue()


def rotated_jpeg(size: tuple[int, int] = (40, 24)) -> bytes:
    """A JPEG whose EXIF says: rotate 90 degrees clockwise to display."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return picture(7, size, "JPEG", exif=exif.tobytes(), quality=95)


def truncated_jpeg() -> bytes:
    """The first half of a JPEG: its header reads fine, its data ends early."""
    data = picture(0, (256, 256), "JPEG", quality=90)
    return data[: len(data) // 2]


SVG = (
    b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
    b'<rect width="10" height="10"/></svg>'
)


def gif() -> bytes:
    """A GIF: a real image in a format the service does not take."""
    out = io.BytesIO()
    Image.new("RGB", (8, 8)).save(out, format="GIF")
    return out.getvalue()
