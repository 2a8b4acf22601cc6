"""Small hostile and unusual image files made in memory: a header that claims a huge size, a
real decompression bomb, and the odd modes a decoder must turn into RGB (animation, CMYK, 16
bits, a transparent palette, an EXIF rotation). corpus.py holds the byte-sized parser floods."""

from __future__ import annotations

import io
import random
import struct
import zlib

from PIL import Image


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **params)
    return buf.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A tiny valid PNG whose header claims the given size (a header-only bomb)."""
    data = bytearray(encode(Image.new("L", (1, 1)), "PNG"))
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


def bomb() -> bytes:
    """A real decompression bomb: 10000x10000 1-bit pixels, about 12 kB of PNG."""
    return encode(Image.new("1", (10_000, 10_000)), "PNG", optimize=True)


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 0, 255))]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)


def cmyk_jpeg() -> bytes:
    return encode(Image.new("CMYK", (40, 30), (0, 255, 255, 0)), "JPEG", quality=95)  # red


def png16() -> bytes:
    return encode(Image.new("I;16", (20, 10), 65535), "PNG")


def palette_transparent() -> bytes:
    image = Image.new("P", (16, 16), 0)
    image.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    image.putpixel((0, 0), 1)
    return encode(image, "PNG", transparency=0)  # index 0 (black) is transparent


def exif_rotated() -> bytes:
    image = Image.new("RGB", (64, 32), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 32, 32))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    return encode(image, "JPEG", exif=exif.tobytes(), quality=95)


# Good files of seeded noise, for the tests to cut short or to refuse by their format.
NOISE = Image.frombytes("RGB", (64, 48), random.Random(0).randbytes(64 * 48 * 3))
GOOD_JPEG = encode(NOISE, "JPEG")
GOOD_PNG = encode(NOISE, "PNG")
