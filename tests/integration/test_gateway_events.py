"""The gateway's event hub (services/gateway/event_hub.py) in this process, on the session's
Redis: a subscription that falls behind reads back what it dropped, and an id resumed ahead of
the reader is not sent twice (tests/system/test_gateway_events.py: GET /v1/events on a real
gateway process)."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis

from core.lifecycle import EVENTS_STREAM
from producer import Client
from services.gateway import event_hub
from services.gateway.event_hub import EventHub


def test_a_subscription_that_falls_behind_reads_back_what_it_dropped(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In process, on the real Redis: a buffer of 3 and 10 entries arriving in one read."""
    monkeypatch.setattr(event_hub, "BUFFER", 3)
    r = redis.Redis.from_url(redis_url)

    async def run() -> list[list[str]]:
        batches: list[list[str]] = []
        with Client(redis_url) as client:
            hub = EventHub(client)
            async with hub.subscribe("slow", "$") as subscription:
                # One transaction: the reader, blocked in XREAD, gets all twenty in one reply.
                with r.pipeline(transaction=True) as pipe:
                    for i in range(10):
                        pipe.xadd(EVENTS_STREAM, {"kind": "job", "id": f"j{i}", "tenant": "slow"})
                        pipe.xadd(EVENTS_STREAM, {"kind": "job", "id": f"x{i}", "tenant": "other"})
                    pipe.execute()
                async for batch in subscription.batches(0.2):
                    batches.append([e.id for e in batch])
                    if sum(map(len, batches)) >= 10:
                        break
            await asyncio.wait_for(hub.idle(), 10)  # the reader stops with its last subscriber
        return batches

    batches = asyncio.run(run())
    r.close()
    assert [b for b in batches if b] == [["j0", "j1", "j2"], [f"j{i}" for i in range(3, 10)]]


def test_a_resumed_id_ahead_of_the_reader_is_not_sent_twice(redis_url: str) -> None:
    """Another gateway's reader may lag behind the id a client resumes from: what the client
    has had is skipped."""
    r = redis.Redis.from_url(redis_url)

    async def run() -> list[str]:
        got: list[str] = []
        with Client(redis_url) as client:
            hub = EventHub(client)
            ahead = int(time.time() * 1000) + 60_000
            async with hub.subscribe("lag", f"{ahead}-0") as subscription:
                # Before the resumed id: the client had it. After: new to it.
                r.xadd(EVENTS_STREAM, {"kind": "job", "id": "had", "tenant": "lag"})
                r.xadd(
                    EVENTS_STREAM, {"kind": "job", "id": "new", "tenant": "lag"}, id=f"{ahead}-1"
                )
                async for batch in subscription.batches(0.2):
                    got += [e.id for e in batch]
                    if got:
                        break
            await asyncio.wait_for(hub.idle(), 10)
        return got

    got = asyncio.run(run())
    r.close()
    assert got == ["new"]
