"""What submit refuses before sending anything, and how the command line says it.

Sources outside the contract (core.contract.source_problem, the rule workers apply too) and
deadlines already past are refused with nothing on Redis; argparse errors name the option as
typed; every subcommand's --help shows its options' defaults.
"""

from __future__ import annotations

import argparse
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from cli.main import build_parser
from core.contract import MAX_SOURCE_CHARS, MAX_TOP_K, source_problem
from producer import Client, InvalidSource
from producer.queues import depth
from tests.support.cli import run_cli

BAD_SOURCES = [
    ("", "non-empty"),
    ("   ", "non-empty"),
    ("x" * (MAX_SOURCE_CHARS + 1), f"longer than {MAX_SOURCE_CHARS}"),
    ("cat\x00.jpg", "U+0000"),
    ("http://example.com/a\r\nHost: evil/", "U+000D"),
    ("dir\tname/cat.jpg", "U+0009"),
    ("cat\x1b[31m.jpg", "U+001B"),
    ("cat\x7f.jpg", "U+007F"),
]


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


def test_producer_and_worker_apply_the_same_rule() -> None:
    from worker.errors import InvalidArguments
    from worker.pipeline import validate_args

    for source, _ in BAD_SOURCES:
        reason = source_problem(source)
        assert reason is not None
        with pytest.raises(InvalidArguments) as info:
            validate_args((source,), {})
        assert str(info.value) == reason
    for fine in ("cat.jpg", " a b.jpg", "https://example.com/ü.jpg", "x" * MAX_SOURCE_CHARS):
        assert source_problem(fine) is None
        assert validate_args((fine,), {})[0] == fine


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


def parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """`parser` and every subcommand's parser under it, nested ones included."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from parsers(sub)


def test_every_custom_type_raises_an_argparse_error_naming_the_text() -> None:
    """argparse turns ArgumentTypeError into `argument --opt: <message>`, while a bare
    ValueError (int("abc")) becomes `invalid <function name> value`."""
    seen: dict[str, str] = {}
    for parser in parsers(build_parser()):
        for action in parser._actions:
            kind = action.type
            if kind is None or isinstance(kind, type):  # int, float, Path: argparse's words
                continue
            assert callable(kind)
            with pytest.raises(argparse.ArgumentTypeError) as info:
                kind("not valid!")
            assert "'not valid!'" in str(info.value), (parser.prog, action.dest)
            seen[getattr(kind, "__name__", repr(kind))] = parser.prog
    assert {"_top_k", "_priority", "_bulk_size", "_limit", "_webhook"} <= set(seen)
    assert {"parse_deadline", "served_name"} <= set(seen)


def test_every_help_shows_each_options_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    checked = []
    for parser in parsers(build_parser()):
        text = " ".join(parser.format_help().split())
        for action in parser._actions:
            default = action.default
            if default is None or default is argparse.SUPPRESS or action.nargs == 0:
                continue  # no default, or a flag's False
            if not action.option_strings and action.nargs not in ("?", "*"):
                continue  # a required positional
            assert f"(default: {default}" in text, (parser.prog, action.dest, default)
            checked.append(f"{parser.prog} {action.dest}")
    assert "imgqueue submit top_k" in checked and "imgqueue status timeout" in checked
    assert "imgqueue model pack version" in checked and "imgqueue events since" in checked
