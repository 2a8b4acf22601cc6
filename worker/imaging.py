"""Safe image decoding: bytes in, an RGB PIL image out, or a documented error."""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from worker.errors import NotAnImage, TooLarge, UnsupportedFormat

# Our own pixel cap (MAX_IMAGE_PIXELS) is checked before decoding; Pillow's is disabled so it
# cannot warn or raise first with a different message.
Image.MAX_IMAGE_PIXELS = None

#: Longest side over shortest side beyond which an image is refused (see _check_size).
MAX_ASPECT_RATIO = 100
#: Pillow decodes RLE-compressed BMPs in pure Python, about 1 s per megapixel: larger ones
#: would only ever end at the decode deadline, so they are refused from the header.
MAX_BMP_RLE_PIXELS = 1_000_000


@dataclass(frozen=True)
class Decoded:
    image: Image.Image  # RGB
    width: int  # of the original, before any draft shrinking
    height: int
    format: str


@dataclass(frozen=True)
class Cropped:
    """An image a decode process resized and centre-cropped to the model's input, as the
    weights' transforms would have (`shrink`, then `center_crop`): its RGB pixels, row by row."""

    pixels: bytearray  # side x side x 3
    side: int
    width: int  # of the original, before any draft shrinking
    height: int
    format: str


def decode(
    data: bytes,
    *,
    max_pixels: int,
    allowed_formats: tuple[str, ...],
    draft_size: int | None = None,
    on_header: Callable[[int, int, str], None] | None = None,
) -> Decoded:
    """Decode image bytes to RGB, honouring EXIF orientation.

    `draft_size`, when given, lets the JPEG decoder shrink by 1/2, 1/4 or 1/8 while decoding,
    never below that many pixels on the shorter side. `on_header` hears the size and format
    once the header passed its checks, before any pixel is decoded.
    """
    if not data:
        raise NotAnImage("the file is empty")
    allowed = _with_aliases(allowed_formats)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns on odd EXIF and palette data
            # Only the allowed formats' parsers ever see the bytes.
            image = Image.open(io.BytesIO(data), formats=_openers(allowed))
            fmt = (image.format or "").upper()
            if fmt not in allowed:  # e.g. MPO from the JPEG opener when only MPO is listed
                raise UnsupportedFormat(f"image format {fmt} is not allowed")
            width, height = image.size
            _check_size(width, height, max_pixels)
            _check_slow_decoder(image, width * height)
            if on_header is not None:
                on_header(width, height, fmt)
            if draft_size and fmt in ("JPEG", "MPO"):
                _draft(image, draft_size)
            image.load()  # the first frame only, for animations
            # In place: the default returns a full copy even when nothing needs turning.
            ImageOps.exif_transpose(image, in_place=True)
            return Decoded(to_rgb(image), width, height, fmt)
    except (UnsupportedFormat, TooLarge, MemoryError):
        raise  # MemoryError: a decode process reports it against its limit
    except UnidentifiedImageError:
        other = sniff_format(data)
        if other and other not in _openers(allowed):  # an allowed format that failed: corrupt
            raise UnsupportedFormat(
                f"image format {other} is not allowed (allowed: {', '.join(allowed_formats)})"
            ) from None
        if other:
            raise NotAnImage(f"the {other} image is truncated or corrupt") from None
        raise NotAnImage("the bytes are not an image in any allowed format") from None
    except Exception as exc:
        # Hostile bytes reach deep into decoders: whatever they raise (OSError, ValueError,
        # struct.error, MemoryError ...) means the same thing, so callers see one type.
        raise NotAnImage(
            f"the image is truncated or corrupt: {type(exc).__name__}: {exc}"
        ) from None


def _with_aliases(formats: tuple[str, ...]) -> tuple[str, ...]:
    # Pillow opens JPEGs carrying an MPF block (many phone cameras) as "MPO".
    return (*formats, "MPO") if "JPEG" in formats and "MPO" not in formats else formats


def _openers(formats: tuple[str, ...]) -> list[str]:
    """The Pillow openers for these formats (MPO files come through the JPEG opener)."""
    Image.init()
    names = {"JPEG" if f == "MPO" else f for f in formats}
    return [f for f in names if f in Image.OPEN]


def _check_size(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise TooLarge(
            f"image is {width}x{height} = {width * height} pixels, over the "
            f"limit of {max_pixels} (MAX_IMAGE_PIXELS)"
        )
    # Resizing the short side to ~232 px scales the long side up with it: a 60000x1 strip
    # would become a 14-gigapixel tensor. Real photos and scans are far below this ratio.
    if max(width, height) > MAX_ASPECT_RATIO * max(1, min(width, height)):
        raise TooLarge(
            f"image is {width}x{height}, more than {MAX_ASPECT_RATIO}:1; too elongated to classify"
        )


def _check_slow_decoder(image: Image.Image, pixels: int) -> None:
    tiles = getattr(image, "tile", None) or []  # ImageFile only
    if pixels > MAX_BMP_RLE_PIXELS and any(tile[0] == "bmp_rle" for tile in tiles):
        raise TooLarge(
            f"RLE-compressed BMP of {pixels} pixels: over {MAX_BMP_RLE_PIXELS}, whose "
            "decoder is too slow (convert it to PNG)"
        )


def sniff_format(data: bytes) -> str | None:
    """The name of the format Pillow would recognise from the first bytes, without parsing."""
    Image.init()
    prefix = data[:16]
    for name, (_factory, accept) in Image.OPEN.items():
        try:
            if accept is not None and accept(prefix):
                return name
        except Exception:  # an accept() check that cannot handle a short prefix
            continue
    return None


def probe(data: bytes, *, max_pixels: int, allowed_formats: tuple[str, ...]) -> Decoded | None:
    """The header checks of `decode` without decoding pixels, for decoders other than Pillow.

    Returns None where the header cannot be read: `decode` then reports the precise error.
    """
    allowed = _with_aliases(allowed_formats)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = Image.open(io.BytesIO(data), formats=_openers(allowed))
        fmt = (image.format or "").upper()
        width, height = image.size
        if fmt not in allowed:
            return None
        _check_size(width, height, max_pixels)  # the same pixel and aspect-ratio caps as decode
    except Exception:
        return None
    return Decoded(image, width, height, fmt)


def _draft(image: Image.Image, min_side: int) -> None:
    w, h = image.size
    short = min(w, h)
    if short < 2 * min_side:
        # No 1/2 reduction fits: leave the decoder alone, since draft mode also switches it to
        # fast DCT and plain upsampling, which would change pixels for nothing.
        return
    # draft() picks the largest reduction that keeps the image at least this big.
    scale = min_side / short
    image.draft("RGB", (max(1, int(w * scale + 0.999)), max(1, int(h * scale + 0.999))))


def shrink(image: Image.Image, short_side: int | None) -> Image.Image:
    """Resize so the shorter side is `short_side`, exactly as torchvision's `Resize(size)` does
    on a PIL image (same output size, PIL's bilinear filter): the weights' transforms then find
    nothing left to resize, and the pixels are the reference ones."""
    if not short_side:
        return image
    w, h = image.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = short_side, int(short_side * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) == (w, h):
        return image
    return image.resize((new_w, new_h), Image.Resampling.BILINEAR)


def center_crop(image: Image.Image, crop: int) -> Image.Image | None:
    """The centre `crop` x `crop` square, exactly as torchvision's `CenterCrop(crop)` cuts it
    from a PIL image (same rounding of the offsets); None where the image is smaller than
    that, which torchvision pads first (left to the transforms)."""
    w, h = image.size
    if w < crop or h < crop:
        return None
    top, left = round((h - crop) / 2.0), round((w - crop) / 2.0)  # half to even, as there
    return image.crop((left, top, left + crop, top + crop))


def to_rgb(image: Image.Image) -> Image.Image:
    """Any mode to 8-bit RGB: alpha composited on white, 16-bit and float scaled, CMYK converted."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        image = image.convert("I")
        mode = "I"
    if mode == "I":
        # 16-bit samples: scale 0..65535 down to 0..255 instead of clipping.
        return image.point(lambda v: v * (1 / 256)).convert("L").convert("RGB")
    if mode == "F":
        return image.point(lambda v: v * 255).convert("L").convert("RGB")
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
