"""The public task contract, shared by the producer, the worker and other languages.

Everything here is plain data: importing it never pulls Celery's worker side or torch.
"""

from __future__ import annotations

TASK_NAME = "classify"
DEFAULT_QUEUE = "celery"
DEFAULT_REDIS_URL = "redis://localhost:6379/0"
DEFAULT_TOP_K = 5
MAX_TOP_K = 1000
RESULT_KEY_PREFIX = "celery-task-meta-"

# Error types a failed job can carry in `result.exc_type`. Stable names: other apps branch on them.
ERROR_TYPES: dict[str, str] = {
    "InvalidArguments": "the task was called with arguments outside the contract",
    "SourceNotAllowed": "the source is a forbidden scheme, address, or a path outside IMAGE_ROOT",
    "SourceNotFound": "the file does not exist or the URL answered 404/410",
    "FetchFailed": "the URL could not be fetched (network error, timeout, HTTP error)",
    "TooLarge": "the image is over the byte or pixel limit",
    "NotAnImage": "the bytes are not a decodable image (empty, truncated, corrupt)",
    "UnsupportedFormat": "the image format is outside the allowed list",
    "JobLost": "the job was delivered too many times without finishing (its worker kept dying)",
    "InternalError": "an unexpected worker error; the message says more",
}

# Image file extensions the CLI picks up when given a directory.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})


def result_key(task_id: str) -> str:
    """The Redis key holding a task's result JSON."""
    return RESULT_KEY_PREFIX + task_id
