"""Image checks: allowlist, byte and pixel caps before decoding, corrupt data, EXIF orientation."""

from __future__ import annotations

import time

import pytest

from embedstream import images
from tests.support.images import SVG, gif, picture, png_bomb, rotated_jpeg, truncated_jpeg

LIMITS = (8 << 20, 25_000_000)


def jpeg() -> bytes:
    return picture(1, (64, 48), "JPEG")


def test_ordinary_images_pass_and_decode_upright() -> None:
    assert images.verify(jpeg(), *LIMITS) == ("JPEG", 64, 48)
    assert images.decode(rotated_jpeg((40, 20)), *LIMITS).size == (20, 40)


def test_a_decompression_bomb_is_refused_from_its_header_alone() -> None:
    bomb = png_bomb()
    assert len(bomb) < 200_000
    started = time.perf_counter()
    with pytest.raises(images.ImageError, match="20000x20000 pixels exceed the limit of 25000000"):
        images.verify(bomb, *LIMITS)
    # Decoding 400 million pixels would take seconds and gigabytes; the header takes microseconds.
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (truncated_jpeg(), "truncated JPEG"),
        (SVG, "SVG is not accepted"),
        (gif(), "not a JPEG, PNG or WebP"),
        (b"", "empty image"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "unreadable PNG header"),
    ],
)
def test_bad_images_are_refused_with_a_reason(data: bytes, needle: str) -> None:
    with pytest.raises(images.ImageError, match=needle):
        images.verify(data, *LIMITS)
    with pytest.raises(images.ImageError):
        images.decode(data, *LIMITS)


def test_byte_and_pixel_caps_are_the_configured_ones() -> None:
    with pytest.raises(images.ImageError, match="bytes exceed the limit of 100 bytes"):
        images.verify(jpeg(), 100, LIMITS[1])
    with pytest.raises(images.ImageError, match="64x48 pixels exceed the limit of 3000"):
        images.verify(jpeg(), LIMITS[0], 3000)
