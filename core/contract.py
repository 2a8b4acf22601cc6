"""The public task contract, shared by the producer, the worker and other languages.

Everything here is plain data: importing it never pulls Celery's worker side or torch.
"""

from __future__ import annotations

import re

# The key layout (the result key included) and priority lists live in core.keys.
from core.keys import BROKER_KEY_PREFIX as BROKER_KEY_PREFIX
from core.keys import CONSUMERS_KEY as CONSUMERS_KEY
from core.keys import DEAD_LETTERS_KEY as DEAD_LETTERS_KEY
from core.keys import MAX_PRIORITY as MAX_PRIORITY
from core.keys import MIN_PRIORITY as MIN_PRIORITY
from core.keys import PRIORITY_SEPARATOR as PRIORITY_SEPARATOR
from core.keys import PRIORITY_STEPS as PRIORITY_STEPS
from core.keys import RESULT_KEY_PREFIX as RESULT_KEY_PREFIX
from core.keys import queue_list as queue_list
from core.keys import result_key as result_key

TASK_NAME = "classify"
# Many images in one message: args `[[{"id": ..., "source": ..., "top_k"?: ...}, ...]]`,
# kwargs `{"top_k": ...}`. Each image's result is stored under its own id, as if `classify`
# had run with that task id (docs: "Bulk messages").
BULK_TASK_NAME = "classify_many"
MAX_BULK_IMAGES = 1000
# Every task a worker runs; a message naming another one is dead-lettered as `unknown-task`.
TASK_NAMES = (TASK_NAME, BULK_TASK_NAME)
DEFAULT_QUEUE = "celery"
DEFAULT_REDIS_URL = "redis://localhost:6379/0"

# Priorities: 0 is the HIGHEST, 9 the lowest, and a message without one counts as 0. Each
# number has its own list; core.keys defines them, re-exported above for other callers.
DEFAULT_TOP_K = 5
MAX_TOP_K = 1000
MAX_SOURCE_CHARS = 8192
# No source holds one: C0 controls (NUL, tab, line breaks, ...) and DEL. A URL's would be
# refused when parsed; a path's could end it early (NUL) or forge log lines.
CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
# The keyword arguments `classify` and `classify_many` take.
TASK_KWARGS = frozenset({"top_k"})

# Error types a failed job can carry in `result.exc_type`. Stable names: other apps branch on them.
ERROR_TYPES: dict[str, str] = {
    "InvalidArguments": "the task was called with arguments outside the contract",
    "SourceNotAllowed": "the source is a forbidden scheme, address, or a path outside IMAGE_ROOT",
    "SourceNotFound": "the file, object or bucket does not exist, or the URL answered 404/410",
    "FetchFailed": "the URL or object could not be fetched (network error, timeout, HTTP error, "
    "access denied)",
    "TooLarge": "the image is over the byte or pixel limit, or needs more memory to decode "
    "than DECODE_MEMORY_LIMIT",
    "DecodeTimeout": "decoding the image took longer than its deadline (a costly or crafted file)",
    "NotAnImage": "the bytes are not a decodable image (empty, truncated, corrupt)",
    "UnsupportedFormat": "the image format is outside the allowed list",
    "InferenceUnavailable": "the worker's model stopped working (its inference thread died or "
    "hung); retried on another worker first",
    "JobLost": "the job was delivered too many times without finishing (its worker kept dying)",
    "Cancelled": "the job was cancelled (Client.cancel, imgqueue cancel) before it started; "
    "state REVOKED",
    "Expired": "the job was not started by its deadline; state REVOKED",
    # Celery's own: stored by Celery, not raised by the worker (worker/errors.py has no class).
    "TaskRevokedError": "state REVOKED, by Celery itself: `celery control revoke` before the "
    "job started (never fetched nor inferred), `revoke --terminate` while it ran with "
    "POOL=prefork (with threads a running job finishes), or a Celery `expires` passed",
    "InternalError": "an unexpected worker error; the message says more",
}

# Image file extensions the CLI picks up when given a directory.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})

# Why a message was dead-lettered (`reason` in each dead-letter entry). Stable names.
DEAD_LETTER_REASONS: dict[str, str] = {
    "too-large": "the message is over MAX_MESSAGE_BYTES",
    "not-json": "the message is not a JSON object",
    "bad-envelope": "the message lacks the fields of a kombu/Celery envelope",
    "bad-body": "the body cannot be decoded (encoding, content type or JSON)",
    "unknown-task": "the message names a task this service does not run",
    "rejected": "a worker rejected the message without requeueing it",
}


class ArgumentError(ValueError):
    """An argument outside the contract, saying which and why (the worker fails the job with
    InvalidArguments and this message)."""


def source_problem(source: object) -> str | None:
    """Why `source` is outside the contract, or None: it must be a string, not empty nor
    blank, of at most MAX_SOURCE_CHARS characters, none of them a control character
    (CONTROL_CHARS). The one rule: producers check it before sending, workers on receipt."""
    if not isinstance(source, str):
        return f"source must be a non-empty string, got {type(source).__name__}"
    if not source.strip():
        return "source must be a non-empty string, got an empty or blank one"
    if len(source) > MAX_SOURCE_CHARS:
        return f"source is longer than {MAX_SOURCE_CHARS} characters ({len(source)})"
    control = CONTROL_CHARS.search(source)
    if control is not None:
        return (
            f"source contains a control character (U+{ord(control.group()):04X} at "
            f"position {control.start()})"
        )
    return None


def check_source(source: object) -> str:
    """`source` if the contract allows it (source_problem); ArgumentError saying why not."""
    problem = source_problem(source)
    if problem is not None:
        raise ArgumentError(problem)
    return str(source)


def check_top_k(top_k: object) -> int:
    """`top_k` if the contract allows it: an integer (not a bool) within 1..MAX_TOP_K."""
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= MAX_TOP_K:
        raise ArgumentError(f"top_k must be an integer within 1..{MAX_TOP_K}, got {top_k!r}")
    return top_k
