"""How many hours of results Redis has room for: the room over the growth (tests/integration
and tests/system test_redis_memory.py: against a real redis-server)."""

from __future__ import annotations

import pytest

from core.memory import (
    MemoryInfo,
    hours_left,
)
from producer.status import render_memory


def test_hours_left_is_the_room_over_the_growth() -> None:
    half = MemoryInfo(1 << 30, 2 << 30, "noeviction")
    assert hours_left(half, 3600.0, 1300) == pytest.approx((1 << 30) / (3600 * 1300))
    assert hours_left(MemoryInfo(3 << 30, 2 << 30, "noeviction"), 3600.0, 1300) == 0
    assert hours_left(MemoryInfo(1 << 30, 0, "noeviction"), 3600.0, 1300) is None  # no limit
    assert hours_left(half, 0.0, 1300) is None  # nothing being written
    text = render_memory(
        {
            **half.to_dict(),
            "result_bytes": 1300,
            "result_bytes_measured": 20,
            "results_per_hour": 3600 * 50,
            "hours_left": hours_left(half, 3600 * 50, 1300),
        }
    )
    assert text == (
        "redis memory: 1.00 GiB used of maxmemory 2.00 GiB (50%, noeviction)\n"
        "  room for about 4.6 hours of results at 50.0/s, 1.27 KiB each (mean of 20 measured; "
        "expiry not counted)"
    )
    assert render_memory(MemoryInfo(5 << 20, 0, "noeviction").to_dict()) == (
        "redis memory: 5.00 MiB used, no maxmemory (noeviction)"
    )
    assert "unknown" in render_memory(None)
