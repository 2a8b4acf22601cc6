"""Limits on request bodies, before any of it is parsed: how large, and how long it may take.

A pure ASGI middleware, so it sees every request first:

- a body that is not multipart may be MAX_JSON_BYTES at most: a larger Content-Length is refused
  with 413 before a byte of the body is read, and a body without one (chunked) is counted as it
  arrives and refused once past the limit. That bounds what JSON parsing can cost, nesting
  included. Multipart uploads are counted file by file by services/gateway/uploads.py instead.
- the whole body must arrive within BODY_TIMEOUT_S of the request's start: a client trickling
  it gets 408 and its connection is closed. The wait is on the event loop (an `asyncio` timeout
  around each `receive`), so a slow client holds no thread; sync endpoints get the body whole.

Both answers close the connection: the rest of a refused body is never read.
"""

from __future__ import annotations

import asyncio

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.gateway import problems

CLOSE = {"Connection": "close"}


def too_large(limit: int) -> problems.Problem:
    return problems.Problem(
        413, f"the request body is over {limit} bytes; nothing was read past that", headers=CLOSE
    )


def too_slow(timeout: float) -> problems.Problem:
    return problems.Problem(
        408, f"the request body did not arrive within {timeout:g} s", headers=CLOSE
    )


def is_multipart(headers: Headers) -> bool:
    return headers.get("content-type", "").lower().startswith("multipart/form-data")


class BodyLimits:
    def __init__(self, app: ASGIApp, *, max_json_bytes: int, timeout_s: float) -> None:
        self.app = app
        self.max_json_bytes = max_json_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        limit = None if is_multipart(headers) else self.max_json_bytes
        if limit is not None and _content_length(headers) > limit:
            await problems.response(too_large(limit))(scope, receive, send)
            return
        body = _Body(receive, limit, self.timeout_s)
        await self.app(scope, body.receive, send)


class _Body:
    """`receive`, with the body's size counted and its arrival on a deadline."""

    def __init__(self, receive: Receive, limit: int | None, timeout_s: float) -> None:
        self._receive = receive
        self.limit = limit
        self.timeout_s = timeout_s
        self.deadline = asyncio.get_running_loop().time() + timeout_s
        self.size = 0
        self.done = False

    async def receive(self) -> Message:
        if self.done:  # after the body: waiting for a disconnect (a streamed response) is fine
            return await self._receive()
        left = self.deadline - asyncio.get_running_loop().time()
        try:
            message: Message = await asyncio.wait_for(self._receive(), max(left, 0.0))
        except asyncio.TimeoutError:
            raise too_slow(self.timeout_s) from None
        if message["type"] != "http.request":
            self.done = True
            return message
        self.size += len(message.get("body", b""))
        if self.limit is not None and self.size > self.limit:
            raise too_large(self.limit)
        self.done = not message.get("more_body", False)
        return message


def _content_length(headers: Headers) -> int:
    try:
        return int(headers.get("content-length", "0"))
    except ValueError:
        return 0
