"""The command line's exit statuses are one table that docs/producing.md and the CLI's help
repeat, and every error ends in its status (tests/integration and tests/system
test_cli_robust.py: the commands themselves)."""

from __future__ import annotations

import re

import redis
from redis.exceptions import InvalidResponse

from cli.exits import MEANINGS, ExitStatus, status_for
from core.errors import (
    BrokerUnavailable,
    ConfigError,
    InvalidSource,
    QueueFull,
    RedisFull,
    ResultTimeout,
    UnknownGroup,
    UnknownModel,
    UploadTooLarge,
)
from tests.support.paths import ROOT


def _documented() -> dict[int, str]:
    """docs/producing.md's exit-status table: status -> meaning."""
    text = (ROOT / "docs" / "producing.md").read_text()
    table = text[text.index("Exit status") :].split("\n\n")[1]
    rows = [line.strip().strip("|").split("|") for line in table.splitlines()]
    return {int(row[0]): row[1].strip() for row in rows if row[0].strip().isdigit()}


def test_the_docs_table_of_exit_statuses_is_the_codes() -> None:
    import cli.main

    assert set(MEANINGS) == set(ExitStatus)
    assert _documented() == {int(status): meaning for status, meaning in MEANINGS.items()}
    doc = cli.main.__doc__ or ""
    for status, meaning in MEANINGS.items():
        assert re.search(rf"^ +{int(status)}  {re.escape(meaning)}$", doc, re.MULTILINE)


def test_each_error_ends_in_its_status() -> None:
    cases: list[tuple[BaseException, int | None]] = [
        (RedisFull(None, None), 4),
        (QueueFull("q", 3, 3, 1), 5),
        (UnknownModel("m", []), 6),
        (InvalidSource("", 0, "empty"), 2),
        (UploadTooLarge(0, 30, 20), 2),
        (ConfigError("REDIS_URL must start with redis://"), 2),
        (UnknownGroup("no group"), 2),
        (ResultTimeout("late"), 3),
        (BrokerUnavailable("down"), 3),
        (InvalidResponse("Protocol Error"), 3),
        (redis.ConnectionError("closed"), 3),
        (RuntimeError("a bug"), None),  # its traceback shows
    ]
    assert [(type(e).__name__, status_for(e)) for e, _ in cases] == [
        (type(e).__name__, status) for e, status in cases
    ]
