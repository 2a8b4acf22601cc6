"""The delivery layer (worker/broker) driven by kombu directly, no worker process: a
synchronous get claims and acks like the consumer (tests/system/test_delivery.py runs workers)."""

from __future__ import annotations

from producer import Client
from tests.support.delivery import (
    dclient_fixture,  # noqa: F401  (the fixture `dclient`)
    dead_letter_reasons,
    dredis_fixture,  # noqa: F401  (the fixture `dredis`)
)
from tests.support.redis_server import RedisServer


def test_a_synchronous_get_claims_like_the_consumer(dclient: Client, dredis: RedisServer) -> None:
    """kombu's `basic_get` (Queue.get, `celery amqp`) goes through the same claim and ack."""
    from kombu import Connection, Queue

    r = dclient.redis
    r.flushdb()
    task_id = dclient.submit("cat.jpg", top_k=1, queue="sync", priority=5)
    with Connection(dredis.url(), transport="worker.broker:Transport") as conn:
        channel = conn.channel()
        queue = Queue("sync", channel=channel)
        message = queue.get(no_ack=False)
        assert message is not None and message.headers["id"] == task_id
        claimed = r.hvals(f"imgqueue:unacked:{channel.cid}")
        assert len(claimed) == 1 and claimed[0].startswith(b"sync\x06\x165\n")
        message.ack()
        assert not r.exists(f"imgqueue:unacked:{channel.cid}")
        assert queue.get(no_ack=False) is None
        r.lpush("sync", b"junk")
        assert queue.get(no_ack=False) is None  # dead-lettered, not returned
        assert dead_letter_reasons(dclient) == ["not-json"]
        channel.close()
    assert r.zscore("imgqueue:consumers", channel.cid) is None  # deregistered at close
