"""A decode process: image bytes in, a small RGB image out, under a memory limit and a clock.

It imports Pillow and worker.imaging only (no torch, no Celery). Each request carries its
deadline: `timeout` seconds to read the header, then that plus `per_mp` seconds per megapixel
of the size the header declares. The process enforces it on itself with a real-time timer whose
signal (SIGALRM, default action) ends it, even inside C code holding the GIL; the worker sees
it die and reports DecodeTimeout. The pixels come back already shrunk to what the weights'
transforms resize to, and centre-cropped when asked to. After a request that grew it past its
recycle size it exits, so a hostile file's memory goes back to the system with it.
"""

from __future__ import annotations

import os
import resource
import signal
from multiprocessing.connection import Connection
from typing import Any

MIB = 1024 * 1024


def serve(fd: int, memory_limit: int, recycle_rss: int) -> None:
    """The process's whole life: requests on the socket `fd` until it closes."""
    main(Connection(fd), memory_limit, recycle_rss)


def main(conn: Connection, memory_limit: int, recycle_rss: int) -> None:
    # A supervisor stopping the worker signals its whole process group (systemd, a terminal's
    # Ctrl-C): the decodes of jobs the worker still finishes must not die with it. This
    # process ends when the worker closes the socket, or kills it, or by its own deadline.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    if memory_limit > 0:
        resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    from PIL import Image

    from worker import imaging

    Image.init()  # every format plugin now, not on the first job

    while True:
        # A request, then its `count` images; the replies as a list, then each one's pixels.
        try:
            request: dict[str, Any] = conn.recv()
            inputs = [conn.recv_bytes() for _ in range(request["count"])]
        except (EOFError, OSError):
            return
        replies, outputs = [], []
        for i in range(len(inputs)):
            reply, pixels = _one(imaging, request, inputs[i], memory_limit)
            inputs[i] = b""  # freed before the recycle check
            replies.append(reply)
            outputs.append(pixels)
        recycle = _rss() > recycle_rss
        conn.send((replies, recycle))
        for reply, pixels in zip(replies, outputs, strict=True):
            if reply[0] == "done":
                conn.send_bytes(pixels)
        if recycle:
            return


def _one(
    imaging: Any, request: dict[str, Any], data: bytes, memory_limit: int
) -> tuple[tuple[Any, ...], bytes]:
    """One image under its own deadline: ("done", ...) and pixels, or ("error", type, text)."""
    pixels = b""
    _deadline(request["timeout"])
    try:
        reply, pixels = _handle(imaging, request, data)
    except MemoryError:
        reply = ("error", "TooLarge", _no_memory(memory_limit))
    except Exception as exc:  # worker.errors carry their type; anything else is corrupt
        own = exc.__class__.__module__ == "worker.errors"
        reply = ("error", type(exc).__name__ if own else "NotAnImage", str(exc) or repr(exc))
    _deadline(0)
    return reply, pixels


def _handle(imaging: Any, request: dict[str, Any], data: bytes) -> tuple[tuple[Any, ...], bytes]:
    limits = {"max_pixels": request["max_pixels"], "allowed_formats": request["formats"]}
    if request["op"] == "probe":
        probed = imaging.probe(data, **limits)
        if probed is None:
            return ("none",), b""
        return ("probed", probed.width, probed.height, probed.format), b""

    def on_header(width: int, height: int, _fmt: str) -> None:
        _deadline(request["timeout"] + request["per_mp"] * width * height / 1e6)

    decoded = imaging.decode(
        data, draft_size=request.get("draft_size"), on_header=on_header, **limits
    )
    image = imaging.shrink(decoded.image, request.get("resize"))
    # The transforms' centre crop too, where they resize exactly as `shrink` did: only the
    # model's input crosses back (224x224 instead of 232 on the short side).
    crop = request.get("crop")
    cropped = imaging.center_crop(image, crop) if crop and request.get("resize") else None
    image = cropped or image
    done = ("done", decoded.width, decoded.height, decoded.format, image.size, bool(cropped))
    return done, image.tobytes()


def _deadline(seconds: float) -> None:
    """From now, `seconds` of wall time until SIGALRM ends this process (0: no deadline)."""
    signal.setitimer(signal.ITIMER_REAL, max(0.0, seconds))


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _no_memory(limit: int) -> str:
    return f"decoding this image needs more than DECODE_MEMORY_LIMIT ({limit // MIB} MiB)"
