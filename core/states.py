"""A job's result states and how they are stored, read alike by producers, workers and services.

A result is Celery's JSON at `celery-task-meta-<id>` (core.keys.result_key):
`{"status": "SUCCESS", "result": ..., ...}`; a failed job's `result` is
`{"exc_type": "SourceNotFound", "exc_message": ["..."], ...}` (core.contract.ERROR_TYPES).
The Lua scripts that store states (worker/store_script.py's STORE) spell FINAL_STATES again.

Importing this needs nothing beyond the standard library (a producer-only install).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

SUCCESS, FAILURE, REVOKED = "SUCCESS", "FAILURE", "REVOKED"
# The states a job ends in: once stored, a job never leaves them (a SUCCESS is never replaced,
# a FAILURE only by a SUCCESS).
FINAL_STATES = frozenset({SUCCESS, FAILURE, REVOKED})


def state_of(raw: str | bytes | None) -> str | None:
    """The state a stored result holds (`status`), or None: no result, or not JSON this
    service wrote (not an object, no string status)."""
    return read(raw)[0]


def read(raw: str | bytes | None) -> tuple[str | None, str | None]:
    """A stored result's state (as `state_of`) and its error type (`result.exc_type`, where
    the result carries one: a FAILURE's or a REVOKED's), else None for either."""
    if raw is None:
        return None, None
    try:
        meta = json.loads(raw)
    except ValueError:  # UnicodeDecodeError included
        return None, None
    if not isinstance(meta, dict):
        return None, None
    state, result = meta.get("status"), meta.get("result")
    error = result.get("exc_type") if isinstance(result, dict) else None
    return (state if isinstance(state, str) else None), (str(error) if error is not None else None)


def failure_of(meta: Mapping[str, Any], state: str) -> tuple[str, str] | None:
    """A failed (or revoked) result's error type and message, from its `result`'s `exc_type`
    (default: `state`) and `exc_message` (a list of arguments, joined by spaces); None where
    `result` is no such object."""
    result = meta.get("result")
    if not isinstance(result, dict):
        return None
    args = result.get("exc_message")
    message = " ".join(map(str, args)) if isinstance(args, list) else str(args or "")
    return str(result.get("exc_type", state)), message
