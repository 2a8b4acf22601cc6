"""Hostile and unusual image files, in-process against worker.imaging: each gives a named error
or a correct RGB image (tests/system/test_hostile_files.py: a set through a real worker)."""

from __future__ import annotations

import time

import pytest
from PIL import Image

from tests.support.images import (
    GOOD_JPEG,
    GOOD_PNG,
    animated_gif,
    bomb,
    cmyk_jpeg,
    encode,
    exif_rotated,
    palette_transparent,
    png16,
    png_claiming,
)
from worker.errors import NotAnImage, TooLarge, UnsupportedFormat
from worker.imaging import decode
from worker.settings import DEFAULT_FORMATS

CAP = 64_000_000


def dec(data: bytes, cap: int = CAP, formats: tuple[str, ...] = DEFAULT_FORMATS) -> Image.Image:
    return decode(data, max_pixels=cap, allowed_formats=formats).image


@pytest.mark.parametrize(
    ("data", "error", "fragment"),
    [
        (b"hello, I am text pretending to be a JPEG\n" * 20, NotAnImage, "not an image"),
        (b"", NotAnImage, "empty"),
        (GOOD_JPEG[: len(GOOD_JPEG) // 2], NotAnImage, "truncated"),
        (GOOD_PNG[: len(GOOD_PNG) // 2], NotAnImage, "truncated"),
        (GOOD_PNG[:40], NotAnImage, "truncated"),
        (png_claiming(100_000, 100_000), TooLarge, "MAX_IMAGE_PIXELS"),
        (png_claiming(2**31 - 1, 1), TooLarge, "MAX_IMAGE_PIXELS"),
        (png_claiming(60_000, 10), TooLarge, "elongated"),
        (encode(Image.new("RGB", (8, 8)), "ICO"), UnsupportedFormat, "ICO"),
        (encode(Image.new("RGB", (8, 8)), "PPM"), UnsupportedFormat, "PPM"),
        (encode(Image.new("RGB", (8, 8)), "PCX"), UnsupportedFormat, "PCX"),
    ],
)
def test_bad_files_give_named_errors(data: bytes, error: type[Exception], fragment: str) -> None:
    with pytest.raises(error, match=fragment):
        dec(data)


def test_decompression_bomb_is_refused_before_decoding() -> None:
    data = bomb()
    assert len(data) < 100_000  # a small file ...
    started = time.monotonic()
    with pytest.raises(TooLarge, match="100000000 pixels"):  # ... of 10^8 pixels
        dec(data)
    assert time.monotonic() - started < 0.5  # refused from the header, never inflated
    assert dec(data, cap=100_000_000).size == (10_000, 10_000)  # the cap is the setting


def test_allowlist_is_a_setting() -> None:
    with pytest.raises(UnsupportedFormat, match="PNG is not allowed"):
        dec(GOOD_PNG, formats=("JPEG",))
    assert dec(GOOD_JPEG, formats=("JPEG",)).mode == "RGB"
    assert dec(GOOD_PNG, formats=("PNG",)).mode == "RGB"


def close(pixel: tuple[int, ...], expected: tuple[int, int, int], tol: int = 12) -> bool:
    return all(abs(a - b) <= tol for a, b in zip(pixel, expected, strict=True))


def test_animated_gif_uses_the_first_frame() -> None:
    image = dec(animated_gif())
    assert image.mode == "RGB"
    assert close(image.getpixel((5, 5)), (255, 0, 0))  # type: ignore[arg-type]


def test_cmyk_jpeg_becomes_rgb() -> None:
    image = dec(cmyk_jpeg())
    assert image.mode == "RGB"
    assert close(image.getpixel((5, 5)), (255, 0, 0), tol=40)  # type: ignore[arg-type]


def test_16_bit_png_is_scaled_not_clipped() -> None:
    image = dec(png16())
    assert image.mode == "RGB"
    assert image.getpixel((3, 3)) == (255, 255, 255)
    mid = dec(encode(Image.new("I;16", (4, 4), 32768), "PNG"))
    assert mid.getpixel((1, 1)) == (128, 128, 128)


def test_palette_transparency_is_composited_on_white() -> None:
    image = dec(palette_transparent())
    assert image.mode == "RGB"
    assert image.getpixel((5, 5)) == (255, 255, 255)  # transparent: white
    assert image.getpixel((0, 0)) == (0, 255, 0)  # opaque green stays


def test_exif_orientation_is_applied() -> None:
    decoded = decode(exif_rotated(), max_pixels=CAP, allowed_formats=DEFAULT_FORMATS)
    assert (decoded.width, decoded.height) == (64, 32)  # as stored
    assert decoded.image.size == (32, 64)  # as displayed: rotated upright
    assert close(decoded.image.getpixel((16, 5)), (255, 0, 0), tol=40)  # type: ignore[arg-type]
    assert close(decoded.image.getpixel((16, 60)), (0, 0, 255), tol=40)  # type: ignore[arg-type]
