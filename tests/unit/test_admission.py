"""A full Redis and a full queue as named errors: the message of RedisFull and finding an
out-of-memory reply anywhere in an exception's chain (tests/integration and tests/system:
against a real redis-server)."""

from __future__ import annotations

import redis
from kombu.exceptions import OperationalError

from core.errors import RedisFull
from core.memory import format_bytes, is_out_of_memory


def test_redis_full_message_carries_the_numbers() -> None:
    exc = RedisFull(4 << 30, 4 << 30, "noeviction")
    assert str(exc) == (
        "Redis is full: used 4.00 GiB of maxmemory 4.00 GiB (noeviction); new work is refused "
        "until memory is freed or raised"
    )
    assert (exc.used_memory, exc.maxmemory) == (4 << 30, 4 << 30)
    assert "used memory > maxmemory" in str(RedisFull(None, None))
    assert [format_bytes(n) for n in (0, 1023, 1536, 3 << 20)] == [
        "0 B",
        "1023 B",
        "1.50 KiB",
        "3.00 MiB",
    ]


def test_out_of_memory_is_found_anywhere_in_the_chain() -> None:
    oom = redis.exceptions.OutOfMemoryError("command not allowed when used memory > 'maxmemory'")
    try:
        try:
            raise oom
        except redis.RedisError as inner:
            raise OperationalError(str(inner)) from inner
    except OperationalError as outer:
        assert is_out_of_memory(outer)
    try:
        try:
            raise redis.ResponseError("OOM command not allowed when used memory > 'maxmemory'.")
        except redis.ResponseError:
            raise redis.exceptions.ExecAbortError("Transaction discarded") from None
    except redis.RedisError as aborted:
        assert is_out_of_memory(aborted)  # its __context__ is the OOM reply
    assert not is_out_of_memory(OperationalError("Connection refused"))
    assert not is_out_of_memory(redis.ResponseError("WRONGTYPE Operation against a key"))
