"""Hostile image files through a real worker: named errors in the results, the worker alive, a
good job beside them unharmed."""

from __future__ import annotations

import io
import random
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from producer import Client, JobFailed
from tests.support.workers import WorkerFactory


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


NOISE = Image.frombytes("RGB", (64, 48), random.Random(0).randbytes(64 * 48 * 3))
GOOD_PNG = encode(NOISE, "PNG")


# -- through a real worker ----------------------------------------------------------------------

HOSTILE = {
    "bomb.png": (bomb, "TooLarge"),
    "huge.png": (lambda: png_claiming(100_000, 100_000), "TooLarge"),
    "cut.png": (lambda: GOOD_PNG[: len(GOOD_PNG) // 2], "NotAnImage"),
    "text.jpg": (lambda: b"<html>not an image</html>", "NotAnImage"),
    "icon.ico": (lambda: encode(Image.new("RGB", (8, 8)), "ICO"), "UnsupportedFormat"),
}
FINE = {
    "anim.gif": animated_gif,
    "cmyk.jpg": cmyk_jpeg,
    "deep.png": png16,
    "palette.png": palette_transparent,
    "rotated.jpg": exif_rotated,
}


def test_hostile_files_through_a_worker(
    workers: WorkerFactory, client: Client, image_root: Path
) -> None:
    hostile = image_root / "hostile"
    hostile.mkdir(exist_ok=True)
    for name, (make, _) in HOSTILE.items():
        (hostile / name).write_bytes(make())
    for name, make_fine in FINE.items():
        (hostile / name).write_bytes(make_fine())
    worker = workers.start(MODEL="sleep:5ms")
    bad = {name: client.submit(f"hostile/{name}") for name in HOSTILE}
    fine = {name: client.submit(f"hostile/{name}") for name in FINE}
    good = client.submit("cat.jpg")
    for name, task_id in bad.items():
        with pytest.raises(JobFailed) as info:
            client.result(task_id, timeout=60)
        assert info.value.error_type == HOSTILE[name][1], name
    sizes = {name: client.result(t, timeout=60)["image"] for name, t in fine.items()}
    assert sizes["anim.gif"]["format"] == "GIF"
    assert sizes["rotated.jpg"] == {"width": 64, "height": 32, "format": "JPEG"}
    assert client.result(good, timeout=60)["image"]["format"] == "JPEG"
    assert worker.alive()
