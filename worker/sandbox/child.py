"""A decode process: image bytes in, a small RGB image out, under an address-space limit.

It imports Pillow and worker.imaging only (no torch, no Celery). Per request it replies with
the header (size and format) as soon as it is read, so the parent can time the decode by the
image's area, then with the pixels already shrunk to what the weights' transforms resize to.
After a request that grew it past its recycle size it exits, so a hostile file's memory goes
back to the system with it.
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
    # process ends when the worker closes the socket, or exits, or kills it.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if memory_limit > 0:
        resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    from PIL import Image

    from worker import imaging

    Image.init()  # every format plugin now, not on the first job

    while True:
        try:
            request: dict[str, Any] = conn.recv()
            data = conn.recv_bytes()
        except (EOFError, OSError):
            return
        pixels = b""
        # A backstop for when the worker itself is gone and cannot kill us: SIGALRM ends the
        # process after the longest deadline the worker could have given this request.
        signal.alarm(max(1, int(request.get("deadline", 60)) + 5))
        try:
            reply, pixels = _handle(imaging, request, data, conn)
        except MemoryError:
            reply = ("error", "TooLarge", _no_memory(memory_limit))
        except Exception as exc:  # worker.errors carry their type; anything else is corrupt
            own = exc.__class__.__module__ == "worker.errors"
            reply = ("error", type(exc).__name__ if own else "NotAnImage", str(exc) or repr(exc))
        signal.alarm(0)
        del data
        recycle = _rss() > recycle_rss
        conn.send((*reply, recycle))
        if reply[0] == "done":
            conn.send_bytes(pixels)
        if recycle:
            return


def _handle(
    imaging: Any, request: dict[str, Any], data: bytes, conn: Connection
) -> tuple[tuple[Any, ...], bytes]:
    limits = {"max_pixels": request["max_pixels"], "allowed_formats": request["formats"]}
    if request["op"] == "probe":
        probed = imaging.probe(data, **limits)
        if probed is None:
            return ("none",), b""
        return ("probed", probed.width, probed.height, probed.format), b""
    decoded = imaging.decode(
        data,
        draft_size=request.get("draft_size"),
        on_header=lambda w, h, fmt: conn.send(("header", w, h, fmt)),
        **limits,
    )
    image = imaging.shrink(decoded.image, request.get("resize"))
    done = ("done", decoded.width, decoded.height, decoded.format, image.size)
    return done, image.tobytes()


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _no_memory(limit: int) -> str:
    return f"decoding this image needs more than DECODE_MEMORY_LIMIT ({limit // MIB} MiB)"
