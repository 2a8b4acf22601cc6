"""Uploaded images: bytes a producer stored on the broker's Redis for one job (core.lifecycle).

A job whose source is `upload:<task id>` reads `<REDIS_KEY_PREFIX>imgqueue:upload:<task id>`,
under the same byte cap as a URL's download (MAX_IMAGE_BYTES). The id in the source must be
the job's own: a crafted message naming another job's upload is refused, so no job reads bytes
it was not given. The key goes when the job reaches a final state, else when it expires
(UPLOAD_TTL_S, the producer's).
"""

from __future__ import annotations

import redis

from core.keys import upload_key
from core.lifecycle import UPLOAD_SOURCE_PREFIX
from worker.errors import FetchFailed, SourceNotAllowed, SourceNotFound, TooLarge
from worker.files import too_large
from worker.settings import Settings

EXPIRED = "the upload expired or was never stored"


def is_upload(source: str) -> bool:
    return source.startswith(UPLOAD_SOURCE_PREFIX)


class Uploads:
    """The broker's Redis, where uploads wait: one client per process (worker/runtime.py)."""

    def __init__(self, client: redis.Redis, key_prefix: str = "") -> None:
        self.client = client
        self.key_prefix = key_prefix

    @classmethod
    def connect(cls, settings: Settings) -> Uploads:
        """Connects on first use: a broker away now is a transient error of that job."""
        client = settings.redis_config.client(
            socket_connect_timeout=5, socket_timeout=10, health_check_interval=30
        )
        return cls(client, settings.redis_key_prefix)

    def read(self, source: str, task_id: str, cap: int) -> bytes:
        """The bytes of `source` (`upload:<task id>`) for the job `task_id`; SourceNotAllowed
        for another job's upload, SourceNotFound once it is gone, TooLarge past `cap`."""
        upload_id = source[len(UPLOAD_SOURCE_PREFIX) :]
        if upload_id != task_id:
            raise SourceNotAllowed(
                f"{source!r} is another job's upload: a job reads only its own "
                f"({UPLOAD_SOURCE_PREFIX}<its task id>)"
            )
        key = self.key_prefix + upload_key(upload_id)
        pipe = self.client.pipeline(transaction=False)
        pipe.strlen(key)
        pipe.getrange(key, 0, cap)  # at most cap + 1 bytes: enough to tell it is over
        try:
            size, data = pipe.execute()
        except redis.ResponseError as exc:  # WRONGTYPE: a key that holds no upload
            raise SourceNotFound(f"{EXPIRED} ({exc})") from None
        except (redis.RedisError, OSError) as exc:
            raise FetchFailed(f"cannot read the upload from Redis: {exc}", transient=True) from None
        if size > cap:
            raise TooLarge(too_large(size, cap))
        if not data:  # absent (STRLEN 0), or expired between the two reads
            raise SourceNotFound(EXPIRED)
        return bytes(data)

    def close(self) -> None:
        self.client.close()
