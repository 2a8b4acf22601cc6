"""What several `imgqueue` command groups share: argument types, the help format, tables and
Redis' refusals in the CLI's words.

Each `type=` function raises ArgumentTypeError for any bad text: argparse prefixes it with the
option as typed, where a bare ValueError (int("abc")) would name the function instead.
"""

from __future__ import annotations

import argparse
import contextlib
import math
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from core.contract import MAX_BULK_IMAGES, MAX_PRIORITY, MAX_TOP_K, MIN_PRIORITY, check_top_k
from core.models import BadModelName, check_name
from core.webhooks import InvalidWebhook, check_webhook
from producer.cancel import deadline_at

if TYPE_CHECKING:
    from producer.client import Client

# -- argument types ---------------------------------------------------------------------------


def _integer(text: str, low: int, high: int | None, expected: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < low or (high is not None and value > high):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def _priority(text: str) -> int:
    expected = f"an integer within {MIN_PRIORITY} (highest) .. {MAX_PRIORITY} (lowest)"
    return _integer(text, MIN_PRIORITY, MAX_PRIORITY, expected)


def _top_k(text: str) -> int:
    try:
        return check_top_k(int(text))
    except ValueError:  # int()'s, or the contract's ArgumentError: in the CLI's words
        raise argparse.ArgumentTypeError(
            f"expected an integer within 1..{MAX_TOP_K}, got {text!r}"
        ) from None


def _webhook(text: str) -> str:
    try:
        return check_webhook(text)
    except InvalidWebhook as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _bulk_size(text: str) -> int:
    return _integer(text, 1, MAX_BULK_IMAGES, f"an integer within 1..{MAX_BULK_IMAGES}")


def served_name(text: str) -> str:
    """A served model name, or '' for the default model."""
    if text == "":
        return text
    try:
        return check_name(text)
    except BadModelName as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_deadline(text: str) -> float | datetime:
    """`--deadline`: SECONDS from now, or an ISO 8601 time (`2030-01-02T03:04:05Z`; without an
    offset, local time) still to come."""
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds) or seconds <= 0:
            raise argparse.ArgumentTypeError(
                f"expected seconds above 0 or a time to come, got {text!r}"
            )
        return seconds
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        expected = "seconds or an ISO 8601 time (e.g. 30, or 2030-01-02T03:04:05Z)"
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    try:
        deadline_at(when)  # one that has passed: refused as by the Client
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return when


# -- help -------------------------------------------------------------------------------------


class DefaultsFormatter(argparse.HelpFormatter):
    """Each option's help ends with its default, unless it has none (None, a flag's False) or
    the help places it itself (`%(default)s`)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        shown = action.option_strings or action.nargs in ("?", "*")
        if (
            "%(default)" in text
            or action.default is None
            or action.default is argparse.SUPPRESS
            or action.nargs == 0
            or not shown
        ):
            return action.help
        return f"{text} (default: %(default)s)"


class TopFormatter(argparse.RawDescriptionHelpFormatter, DefaultsFormatter):
    """The top level's: its description (the module doc) as written."""


class Parser(argparse.ArgumentParser):
    """`imgqueue`'s parser; add_subparsers makes every subcommand's of this class too, so each
    --help shows the defaults."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", DefaultsFormatter)
        super().__init__(*args, **kwargs)


# -- output -----------------------------------------------------------------------------------


def print_table(rows: Sequence[Sequence[str]]) -> None:
    """Rows (the first the header) in columns as wide as their widest cell."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


@contextlib.contextmanager
def redis_errors(client: Client, who: str) -> Iterator[None]:
    """Redis' refusals as the CLI's errors: a permission refused names `who` may (exit 3),
    a full Redis is RedisFull (exit 4), a lost one BrokerUnavailable (exit 3)."""
    import redis

    from core.errors import BrokerUnavailable, ProducerError

    try:
        yield
    except redis.exceptions.NoPermissionError as exc:
        raise ProducerError(f"{exc} ({who})") from exc
    except redis.exceptions.OutOfMemoryError as exc:
        raise client.full_error() from exc
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        where = client.config.safe_url()
        raise BrokerUnavailable(f"cannot reach Redis at {where}: {exc}") from exc
