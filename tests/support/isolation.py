"""What a test tier may reach beyond the pytest process, held to: tests/unit nothing (no
process, no network socket connected or bound), tests/integration only redis-server and
redis-cli among processes. A test that reaches further fails, naming what it tried: it belongs
in a higher tier (docs/development.md, "The test tiers").

Checked in the thread that runs the test, so that a server thread a session fixture left
running for another tier is never disturbed."""

from __future__ import annotations

import multiprocessing.process
import os
import socket
import subprocess
import threading
from collections.abc import Callable
from typing import Any

import pytest

_NETWORK = (socket.AF_INET, socket.AF_INET6)
# What a library runs by itself, once, in whichever test first needs it: ctypes' library
# lookup (torch's import asks it), and fontconfig's font list, which matplotlib reads to build
# its font cache on a machine that has none yet (a fresh CI machine). Not a process of the
# test's own.
_LIBRARY_LOOKUPS = frozenset({"ldconfig", "gcc", "cc", "objdump", "ld", "fc-list"})


def _program(args: Any) -> str:
    first = args if isinstance(args, (str, bytes, os.PathLike)) else args[0]
    return os.path.basename(os.fsdecode(first).split()[0])


def confine(
    monkeypatch: pytest.MonkeyPatch, tier: str, programs: frozenset[str], network: bool
) -> None:
    """Refuse, in this thread, processes other than `programs` and (unless `network`) network
    sockets."""
    here = threading.get_ident()

    def refuse(what: str) -> None:
        raise AssertionError(f"{tier} runs no {what}: move the test up a tier")

    popen_init = subprocess.Popen.__init__

    def guarded_popen(self: subprocess.Popen[Any], args: Any, *rest: Any, **kw: Any) -> None:
        program = _program(args)
        if threading.get_ident() == here and program not in programs | _LIBRARY_LOOKUPS:
            refuse(f"process ({program})")
        popen_init(self, args, *rest, **kw)

    monkeypatch.setattr(subprocess.Popen, "__init__", guarded_popen)
    start = multiprocessing.process.BaseProcess.start

    def guarded_start(self: multiprocessing.process.BaseProcess) -> None:
        if threading.get_ident() == here:
            refuse("process (multiprocessing)")
        start(self)

    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", guarded_start)
    if network:
        return
    for name in ("connect", "connect_ex", "bind"):
        guarded = _guarded_socket(getattr(socket.socket, name), name, here, refuse)
        monkeypatch.setattr(socket.socket, name, guarded)


def _guarded_socket(
    call: Callable[..., Any], name: str, here: int, refuse: Callable[[str], None]
) -> Callable[..., Any]:
    def guarded(self: socket.socket, address: Any) -> Any:
        if threading.get_ident() == here and self.family in _NETWORK:
            refuse(f"network socket ({name} {address!r})")
        return call(self, address)

    return guarded
