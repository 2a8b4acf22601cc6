"""A Server-Sent Events client for tests: one real HTTP connection (`requests`, streamed), read
by a background thread into a list that tests wait on (tests/support/waiting.py)."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from dataclasses import dataclass
from typing import Any

import requests

from tests.support.waiting import wait_for


@dataclass(frozen=True)
class Message:
    """One SSE message: `id`, `event`, `data` as sent, and `data` parsed (JSON)."""

    id: str
    event: str
    data: str

    @property
    def json(self) -> Any:
        return json.loads(self.data)


class SseStream:
    """`GET url` with `headers`, as `text/event-stream`; `messages` (events) and `comments`
    (keep-alives, in order with them in `log`) grow as they arrive."""

    def __init__(self, url: str, headers: dict[str, str], timeout: float = 10) -> None:
        self.response = requests.get(
            url, headers={"Accept": "text/event-stream", **headers}, stream=True, timeout=timeout
        )
        self.status = self.response.status_code
        self.messages: list[Message] = []
        self.comments: list[str] = []
        self.log: list[Message | str] = []
        self.ended = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, daemon=True)
        if self.status == 200:
            self._thread.start()

    def _read(self) -> None:
        buffer = b""
        with contextlib.suppress(requests.RequestException, OSError, AttributeError):
            for chunk in self.response.iter_content(chunk_size=None):
                buffer += chunk.replace(b"\r\n", b"\n")
                while b"\n\n" in buffer:
                    block, buffer = buffer.split(b"\n\n", 1)
                    self._parse(block.decode())
        self.ended = True

    def _parse(self, block: str) -> None:
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            if line.startswith(":"):
                with self._lock:
                    self.comments.append(line[1:].strip())
                    self.log.append(line[1:].strip())
                continue
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")
        if "data" in fields:
            message = Message(fields.get("id", ""), fields.get("event", "message"), fields["data"])
            with self._lock:
                self.messages.append(message)
                self.log.append(message)

    def wait_messages(self, count: int, timeout: float = 30) -> list[Message]:
        """The first `count` messages, once that many arrived."""

        def enough() -> list[Message]:
            with self._lock:
                return list(self.messages) if len(self.messages) >= count else []

        got: list[Message] = wait_for(enough, timeout, f"{count} SSE message(s)")
        return got[:count]

    def wait_ids(self, ids: set[str], timeout: float = 30) -> dict[str, Message]:
        """The messages of these job or group ids (`data.id`), once each has one."""

        def found() -> dict[str, Message]:
            with self._lock:
                out = {m.json["id"]: m for m in self.messages if m.json["id"] in ids}
            return out if len(out) == len(ids) else {}

        got: dict[str, Message] = wait_for(found, timeout, f"the events of {sorted(ids)}")
        return got

    def wait_comment_after(self, count: int, timeout: float = 10) -> None:
        """Until a comment (a keep-alive) follows the `count`-th message: the server had
        nothing more to send by then."""

        def seen() -> bool:
            with self._lock:
                events = [i for i, item in enumerate(self.log) if isinstance(item, Message)]
                after = events[count - 1] if count else -1
                return any(isinstance(item, str) for item in self.log[after + 1 :])

        wait_for(seen, timeout, f"a keep-alive after {count} message(s)")

    def close(self) -> None:
        """Disconnect: shut the socket down first, so the server sees the connection end even
        while the reader thread is blocked on it."""
        connection = getattr(self.response.raw, "connection", None)
        sock = getattr(connection, "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self.response.close()
        if self._thread.is_alive():
            self._thread.join(5)

    def __enter__(self) -> SseStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
