"""Fuzzing the decode path: random and mutated bytes only ever give the documented errors."""

from __future__ import annotations

import io

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from worker.errors import NotAnImage, TooLarge, UnsupportedFormat
from worker.imaging import decode
from worker.settings import DEFAULT_FORMATS

DOCUMENTED = (NotAnImage, TooLarge, UnsupportedFormat)


def _seed(fmt: str, mode: str = "RGB", **params: object) -> bytes:
    buf = io.BytesIO()
    image = Image.new(mode, (24, 16), 90)
    image.save(buf, fmt, **params)
    return buf.getvalue()


SEEDS = [
    _seed("JPEG"),
    _seed("JPEG", progressive=True),
    _seed("PNG"),
    _seed("PNG", "P"),
    _seed("GIF", "P"),
    _seed("WEBP"),
    _seed("BMP"),
    _seed("TIFF"),
    _seed("TIFF", compression="tiff_lzw"),
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 8))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "splat"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "cut":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        else:  # large values in headers: sizes, counts, offsets
            data[pos : pos + 4] = draw(
                st.sampled_from(
                    [
                        b"\xff\xff\xff\xff",
                        b"\x00\x00\x00\x00",
                        b"\x7f\xff\xff\xff",
                        b"\x00\x01\x00\x00",
                    ]
                )
            )
    return bytes(data)


def check(data: bytes) -> None:
    try:
        decoded = decode(data, max_pixels=4_000_000, allowed_formats=DEFAULT_FORMATS)
    except DOCUMENTED:
        return
    assert decoded.image.mode == "RGB"
    assert decoded.image.width > 0 and decoded.image.height > 0


@settings(
    max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(st.binary(max_size=2048))
def test_random_bytes(data: bytes) -> None:
    check(data)


@settings(
    max_examples=1200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(mutated())
def test_mutated_images(data: bytes) -> None:
    check(data)
