"""What a message must be before a worker hands it to Celery; anything else is dead-lettered.

kombu trusts what it pops: a message that is not JSON, or a JSON object without `properties`,
raises inside the consumer loop and stops the worker ("Unrecoverable error"), and the message
then kills the next worker too. Here each message is checked first and, if it fails, gets one
of core.contract.DEAD_LETTER_REASONS with a readable detail.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

JSON_TYPES = ("application/json",)
TEXT_ENCODINGS = ("utf-8", "utf8", "binary", None)


class Junk(Exception):
    """Raised when a message cannot be delivered; `reason` is a dead-letter reason."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Rules:
    """Limits for one channel: the size cap, and for task queues the tasks that exist."""

    max_bytes: int
    known_tasks: Collection[str] | None = None  # None: any task name


def parse(raw: bytes, rules: Rules, *, task_queue: bool) -> dict[str, Any]:
    """The message as kombu expects it, or Junk.

    `task_queue`: consumed with acknowledgements, so it must be a Celery task message
    (queues consumed without, like the replies of `celery inspect`, only need the envelope).
    """
    if len(raw) > rules.max_bytes:
        raise Junk("too-large", f"{len(raw)} bytes, over MAX_MESSAGE_BYTES={rules.max_bytes}")
    try:
        payload = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        # RecursionError: "[[[[..." nested deeper than the decoder allows.
        raise Junk("not-json", f"not JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise Junk("not-json", f"a JSON {type(payload).__name__}, not an object")
    properties = payload.get("properties")
    if not isinstance(properties, dict):
        raise Junk("bad-envelope", "no `properties` object")
    headers = payload.get("headers")
    if headers is not None and not isinstance(headers, dict):
        raise Junk("bad-envelope", "`headers` is not an object")
    delivery_info = properties.get("delivery_info")
    if delivery_info is not None and not isinstance(delivery_info, dict):
        raise Junk("bad-envelope", "`properties.delivery_info` is not an object")
    body = payload.get("body")
    if not isinstance(body, str):
        raise Junk("bad-envelope", "no `body` string")
    decoded = _decode_body(body, properties.get("body_encoding"))
    if task_queue:
        _check_task(payload, headers or {}, decoded, rules)
    return payload


def _decode_body(body: str, encoding: Any) -> bytes:
    if encoding in (None, "", "utf-8"):
        return body.encode("utf-8")
    if encoding != "base64":
        raise Junk("bad-body", f"unknown body_encoding {encoding!r}")
    try:
        return base64.b64decode(body.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError) as exc:
        raise Junk("bad-body", f"body is not valid base64: {exc}") from None


def _check_task(
    payload: dict[str, Any], headers: dict[str, Any], body: bytes, rules: Rules
) -> None:
    content_type = payload.get("content-type")
    if content_type not in JSON_TYPES:
        raise Junk("bad-body", f"content type {content_type!r} is not accepted (JSON only)")
    if payload.get("content-encoding") not in TEXT_ENCODINGS:
        raise Junk("bad-body", f"content encoding {payload.get('content-encoding')!r}")
    try:
        decoded = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise Junk("bad-body", f"body is not JSON: {exc}") from None
    if "task" in headers:  # protocol 2: body is [args, kwargs, embed]
        name, task_id = headers.get("task"), headers.get("id")
        shape = (
            isinstance(decoded, list)
            and len(decoded) == 3
            and isinstance(decoded[0], list)
            and isinstance(decoded[1], dict)
            and isinstance(decoded[2], dict | type(None))
        )
        if not shape:
            raise Junk("bad-body", "body is not Celery's [args, kwargs, embed]")
    elif isinstance(decoded, dict) and "task" in decoded:  # protocol 1
        name, task_id = decoded.get("task"), decoded.get("id")
    else:
        raise Junk("bad-envelope", "no task name (`headers.task`, or `task` in the body)")
    if not isinstance(name, str) or not isinstance(task_id, str) or not task_id:
        raise Junk("bad-envelope", "task name or id is not a string")
    known = rules.known_tasks
    if known is not None and name not in known and not name.startswith("celery."):
        raise Junk("unknown-task", f"task {name[:200]!r} is not one this service runs")
