"""The producer when Redis is not there (a free loopback port nobody listens on): a clear error,
without the password."""

from __future__ import annotations


def test_unreachable_redis_is_a_clear_error() -> None:
    from producer import BrokerUnavailable, Client
    from tests.support.ports import free_port

    with Client(f"redis://:hunter2@127.0.0.1:{free_port()}/0") as client:
        try:
            client.submit("cat.jpg")
        except BrokerUnavailable as exc:
            assert "cannot reach Redis" in str(exc)
            assert "hunter2" not in str(exc)
        else:
            raise AssertionError("submit to a closed port must fail")
