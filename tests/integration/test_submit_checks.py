"""What submit refuses before sending anything, and how the command line says it.

Sources outside the contract (core.contract.source_problem, the rule workers apply too) and
deadlines already past are refused with nothing on Redis (the session's redis-server), by the
Client and by the CLI in this process, which names the option as typed.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from core.contract import MAX_TOP_K
from producer import Client, InvalidSource
from producer.queues import depth
from tests.support.bad_sources import BAD_SOURCES
from tests.support.cli import run_cli


@pytest.fixture
def queue() -> str:
    return f"checks-{uuid.uuid4().hex[:8]}"


def nothing_sent(client: Client, queue: str) -> bool:
    """No message waits in `queue` (every priority), and no key names it."""
    return depth(client.redis, client.config, queue) == 0 and not client.redis.keys(f"*{queue}*")


@pytest.fixture
def checked(client: Client, queue: str) -> Iterator[Client]:
    """The client, after proving a good submit to `queue` is seen (so "nothing sent" can fail)."""
    other = f"control-{uuid.uuid4().hex[:8]}"
    client.submit("cat.jpg", queue=other)
    assert depth(client.redis, client.config, other) == 1 and not nothing_sent(client, other)
    yield client


@pytest.mark.parametrize(("source", "why"), BAD_SOURCES)
def test_a_bad_source_is_refused_before_anything_is_sent(
    checked: Client, queue: str, source: str, why: str
) -> None:
    with pytest.raises(InvalidSource) as info:
        checked.submit(source, queue=queue)
    assert why in info.value.reason and why in str(info.value)
    assert info.value.source == source and info.value.index == 0
    assert isinstance(info.value, ValueError)
    assert nothing_sent(checked, queue)


@pytest.mark.parametrize("bulk_size", [1, 64])
def test_one_bad_source_among_many_sends_none_of_them(
    checked: Client, queue: str, bulk_size: int
) -> None:
    sources = [f"ok-{i}.jpg" for i in range(499)] + ["bad\n.jpg"] + ["ok.jpg"] * 10
    with pytest.raises(InvalidSource) as info:
        checked.submit_many(sources, queue=queue, bulk_size=bulk_size)
    assert info.value.index == 499 and "source #500" in str(info.value)
    assert nothing_sent(checked, queue)
    groups_before = set(checked.results.keys("*group*"))  # other tests' groups share the db
    with pytest.raises(InvalidSource):  # a group is not created either
        checked.submit_many(sources, queue=queue, group=True)
    assert nothing_sent(checked, queue)
    assert set(checked.results.keys("*group*")) == groups_before


def test_the_cli_refuses_a_bad_source_with_a_usage_error(
    capsys: pytest.CaptureFixture[str], redis_url: str, client: Client, queue: str
) -> None:
    code, out, err = run_cli(capsys, redis_url, "submit", "--queue", queue, "ok.jpg", "a\x01.jpg")
    assert code == 2 and out == ""
    assert "source #2" in err and "control character" in err
    assert nothing_sent(client, queue)


def test_a_deadline_already_past_is_refused_in_both_forms(
    capsys: pytest.CaptureFixture[str], redis_url: str, client: Client, queue: str
) -> None:
    past = datetime(2020, 1, 1, tzinfo=UTC)
    with pytest.raises(ValueError, match="2020-01-01T00:00:00"):
        client.submit("cat.jpg", queue=queue, deadline=past)
    naive = datetime.now() - timedelta(minutes=1)  # local time
    with pytest.raises(ValueError, match="has already passed"):
        client.submit_many(["cat.jpg"], queue=queue, deadline=naive)
    assert nothing_sent(client, queue)
    submit = ("submit", "--queue", queue, "--deadline")
    for typed, why in [
        ("2020-01-01T00:00:00Z", "deadline 2020-01-01T00:00:00+00:00 has already passed"),
        ("-5", "expected seconds above 0 or a time to come, got '-5'"),
        ("0", "expected seconds above 0 or a time to come, got '0'"),
    ]:
        code, out, err = run_cli(capsys, redis_url, *submit, typed, "a.jpg")
        assert code == 2 and out == "", typed
        assert f"argument --deadline: {why}" in err, err
    assert nothing_sent(client, queue)
    # One still to come goes through.
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    code, out, err = run_cli(capsys, redis_url, *submit, future, "a.jpg")
    assert code == 0, err
    assert depth(client.redis, client.config, queue) == 1


def test_top_k_errors_name_the_option_as_typed(
    capsys: pytest.CaptureFixture[str], redis_url: str
) -> None:
    code, _, err = run_cli(capsys, redis_url, "submit", "--top-k", "abc", "a.jpg")
    assert code == 2
    assert f"argument --top-k: expected an integer within 1..{MAX_TOP_K}, got 'abc'" in err
    assert "_top_k" not in err
