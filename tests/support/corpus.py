"""Crafted image files, one per family of parser amplification, generated at a byte size.

Each is a valid-looking file whose header passes the pixel cap but whose structure makes a
parser work (and allocate) per entry: measured in-process on 50 MB files before the decode
sandbox, Pillow needed 7 to 45 s and 0.5 to 1.7 GB to open them.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable

from PIL import Image


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def png_chunk_flood(size: int) -> bytes:
    """A 2x2 PNG with millions of empty private chunks before its pixels."""
    head = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 2, 8, 2, 0, 0, 0))
    tail = _png_chunk(b"IDAT", zlib.compress(b"\x00" * 14)) + _png_chunk(b"IEND", b"")
    one = _png_chunk(b"prVt", b"")
    return head + one * ((size - len(head) - len(tail)) // len(one)) + tail


def jpeg_marker_flood(size: int) -> bytes:
    """An 8x8 JPEG with millions of empty comment segments before its frame."""
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "JPEG")
    good = buf.getvalue()
    comment = b"\xff\xfe\x00\x02"
    return good[:2] + comment * ((size - len(good)) // len(comment)) + good[2:]


def tiff_strip_table(size: int) -> bytes:
    """A 1x2 TIFF whose strip tables have millions of entries."""
    n = (size - 200) // 8
    entries = 9
    offsets_at = 8 + 2 + entries * 12 + 4
    counts_at = offsets_at + 4 * n
    pixels_at = counts_at + 4 * n

    def tag(number: int, kind: int, count: int, value: int) -> bytes:
        return struct.pack("<HHII", number, kind, count, value)

    ifd = struct.pack("<H", entries) + b"".join(
        [
            tag(256, 4, 1, 1),  # width
            tag(257, 4, 1, 2),  # height
            tag(258, 3, 1, 8),  # bits per sample
            tag(259, 3, 1, 1),  # no compression
            tag(262, 3, 1, 1),  # black is zero
            tag(273, 4, n, offsets_at),  # strip offsets
            tag(277, 3, 1, 1),  # samples per pixel
            tag(278, 4, 1, 1),  # rows per strip
            tag(279, 4, n, counts_at),  # strip byte counts
        ]
    )
    body = struct.pack("<I", pixels_at) * n + struct.pack("<I", 1) * n
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + body + b"\x00\x00"


def gif_extension_flood(size: int) -> bytes:
    """A 1x1 GIF with millions of comment extensions before its first frame."""
    head = b"GIF89a" + struct.pack("<HHBBB", 1, 1, 0, 0, 0)
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00\x3b"
    comment = b"\x21\xfe\x01a\x00"
    return head + comment * ((size - len(head) - len(frame)) // len(comment)) + frame


def bmp_rle_runs(size: int) -> bytes:
    """An RLE8 BMP of one-pixel runs, which Pillow decodes in pure Python."""
    side = 1
    while (side * 2) * 2 * (side * 2) + 2000 < size and side < 4096:
        side *= 2
    row = b"\x01\x05" * side + b"\x00\x00"
    body = row * side + b"\x00\x01"
    palette = b"\x00\x00\x00\x00" * 256
    offset = 14 + 40 + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, side, side, 1, 8, 1, len(body), 2835, 2835, 256, 0)
    return b"BM" + struct.pack("<IHHI", offset + len(body), 0, 0, offset) + info + palette + body


FAMILIES: dict[str, tuple[str, Callable[[int], bytes]]] = {
    "png-chunk-flood": ("png", png_chunk_flood),
    "jpeg-marker-flood": ("jpg", jpeg_marker_flood),
    "tiff-strip-table": ("tif", tiff_strip_table),
    "gif-extension-flood": ("gif", gif_extension_flood),
    "bmp-rle-runs": ("bmp", bmp_rle_runs),
}


def huge_rgba_png() -> bytes:
    """64 megapixels of half-transparent RGBA in about a megabyte: legal, and costly."""
    buf = io.BytesIO()
    Image.new("RGBA", (8000, 8000), (10, 20, 30, 128)).save(buf, "PNG", compress_level=1)
    return buf.getvalue()
