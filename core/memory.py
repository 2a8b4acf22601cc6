"""Redis memory: how full it is, whether an error means "full", and how long results fit.

With `maxmemory-policy noeviction` (deploy/redis.conf) a full Redis refuses every write,
new jobs included, with `OOM command not allowed when used memory > 'maxmemory'`; reads and
`INFO` still work, so the numbers can be read when they matter. Importing this never imports
Celery or torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis

from core.connections import RedisConfig
from core.text import text

# What one stored result takes in Redis (`MEMORY USAGE` of a top-5 `classify` result: the
# JSON plus the key and Redis' own overhead), for when no result can be measured.
RESULT_BYTES_FALLBACK = 1300
# Result keys measured per estimate, found with RANDOMKEY (O(1) each; never a keyspace scan).
RESULT_SAMPLES = 20
_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


@dataclass(frozen=True)
class MemoryInfo:
    """`INFO memory`'s numbers; `maxmemory` 0 means no limit (the host's memory is)."""

    used_memory: int
    maxmemory: int
    maxmemory_policy: str

    @property
    def room(self) -> int | None:
        """Bytes left before maxmemory; None without a maxmemory."""
        return max(self.maxmemory - self.used_memory, 0) if self.maxmemory else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "used_memory": self.used_memory,
            "maxmemory": self.maxmemory,
            "maxmemory_policy": self.maxmemory_policy,
        }


def format_bytes(n: float) -> str:
    """1536 -> '1.50 KiB', 4 << 30 -> '4.00 GiB'."""
    value, unit = float(n), _UNITS[0]
    for unit in _UNITS:
        if abs(value) < 1024 or unit == _UNITS[-1]:
            break
        value /= 1024
    return f"{int(value)} B" if unit == "B" else f"{value:.2f} {unit}"


def read_memory(client: Any) -> MemoryInfo | None:
    """INFO memory, or None when this user may not run INFO (the shipped `producer` user).

    Connection errors propagate: the caller says Redis cannot be reached.
    """
    try:
        info = client.info("memory")
    except redis.ResponseError:  # NoPermissionError included
        return None
    return MemoryInfo(
        int(info.get("used_memory", 0)),
        int(info.get("maxmemory", 0)),
        str(info.get("maxmemory_policy", "")),
    )


def is_out_of_memory(exc: BaseException | None) -> bool:
    """Whether `exc`, or any exception it was raised from or during, is Redis' OOM refusal.

    kombu wraps redis-py's OutOfMemoryError (a ResponseError) in its OperationalError, and a
    refused MULTI/EXEC surfaces as ExecAbortError with the OOM error as its context.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, redis.exceptions.OutOfMemoryError):
            return True
        if isinstance(exc, redis.ResponseError) and "maxmemory" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def result_bytes(
    client: Any, config: RedisConfig, samples: int = RESULT_SAMPLES
) -> tuple[int, int]:
    """(bytes per stored result, results measured): the mean `MEMORY USAGE` of up to `samples`
    result keys that RANDOMKEY happens to return, or (RESULT_BYTES_FALLBACK, 0) when none does
    (results elsewhere, none stored yet, or the commands not allowed). Two round trips."""
    prefix = config.result_key("")
    try:
        with client.pipeline(transaction=False) as pipe:
            for _ in range(samples):
                pipe.randomkey()
            keys = {text(k) for k in pipe.execute() if k is not None}
        keys = {k for k in keys if k.startswith(prefix)}
        if not keys:
            return RESULT_BYTES_FALLBACK, 0
        with client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.memory_usage(key)
            sizes = [int(s) for s in pipe.execute() if s]
    except redis.ResponseError:
        return RESULT_BYTES_FALLBACK, 0
    if not sizes:
        return RESULT_BYTES_FALLBACK, 0
    return round(sum(sizes) / len(sizes)), len(sizes)


def hours_left(memory: MemoryInfo, results_per_hour: float, bytes_per_result: int) -> float | None:
    """Hours until maxmemory at this result rate, if nothing expired; None without a
    maxmemory or without results being written."""
    room = memory.room
    if room is None or results_per_hour <= 0 or bytes_per_result <= 0:
        return None
    return room / (results_per_hour * bytes_per_result)
