"""Reading local files, confined to IMAGE_ROOT.

The path is resolved (symlinks included) and must lie inside the resolved root; `commonpath`,
not a string prefix, so /data/img2 is not inside /data/img. Devices and FIFOs are refused
before they are opened, and where the opened file really is gets checked again afterwards.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from worker.errors import SourceNotAllowed, SourceNotFound, TooLarge
from worker.settings import Settings


def resolve_path(source: str, root: Path | None, real_root: str | None = None) -> Path:
    """The real path of `source` (absolute, or relative to IMAGE_ROOT), if it lies inside root."""
    if root is None:
        raise SourceNotAllowed("local paths are disabled on this worker (IMAGE_ROOT is not set)")
    if "\x00" in source:
        raise SourceNotAllowed("the path contains a NUL byte")
    real_root = real_root or os.path.realpath(root)
    candidate = os.path.join(real_root, source)  # an absolute source replaces the root
    real = os.path.realpath(candidate)
    # commonpath, not startswith: /data/img2 must not pass as inside /data/img.
    if os.path.commonpath([real, real_root]) != real_root:
        raise SourceNotAllowed(f"{source!r} is outside IMAGE_ROOT")
    return Path(real)


def read_file(source: str, settings: Settings) -> tuple[Path, bytes]:
    """The real path and bytes of a local source, or a documented error."""
    # Resolved once per read: the same answer for the check before the open and the one after.
    real_root = os.path.realpath(settings.image_root or "/")
    path = resolve_path(source, settings.image_root, real_root)
    try:
        # stat before open: a device or FIFO is refused without ever being opened.
        before = os.stat(path)
    except FileNotFoundError:
        raise SourceNotFound(f"no such file: {source!r}") from None
    except OSError as exc:
        raise SourceNotFound(f"cannot open {source!r}: {exc.strerror}") from None
    _require_regular(before, source)
    try:
        # O_NONBLOCK: a FIFO swapped in now must not hang; O_NOFOLLOW: the final component was
        # resolved above, so a symlink appearing there now is a race and refused.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise SourceNotFound(f"no such file: {source!r}") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SourceNotAllowed(f"{source!r} changed into a symlink while opening") from None
        if exc.errno == errno.EISDIR:
            raise SourceNotAllowed(f"{source!r} is a directory, not a file") from None
        raise SourceNotFound(f"cannot open {source!r}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        _require_regular(info, source)
        _require_confined(f.fileno(), real_root, source)
        if info.st_size > settings.max_image_bytes:
            raise TooLarge(too_large(info.st_size, settings.max_image_bytes))
        data = f.read(settings.max_image_bytes + 1)
    if len(data) > settings.max_image_bytes:
        raise TooLarge(too_large(len(data), settings.max_image_bytes))
    return path, data


def _require_regular(info: os.stat_result, source: str) -> None:
    if not stat.S_ISREG(info.st_mode):
        kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
        raise SourceNotAllowed(f"{source!r} is {kind}")


def _require_confined(fd: int, real_root: str, source: str) -> None:
    """Where the open file really is (Linux /proc), so a directory swapped for a symlink
    between the check and the open cannot lead outside IMAGE_ROOT (`real_root`: its real
    path)."""
    try:
        real = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return  # no /proc: the realpath check above stands alone
    if not os.path.isabs(real) or os.path.commonpath([real, real_root]) != real_root:
        raise SourceNotAllowed(f"{source!r} moved outside IMAGE_ROOT while opening")


def too_large(size: int, cap: int) -> str:
    return f"the image is {size} bytes, over the limit of {cap} (MAX_IMAGE_BYTES)"
