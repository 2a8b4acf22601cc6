"""What submit refuses, in this process: producers and workers apply the same rule to sources
(core.contract.source_problem); argparse errors name the option as typed; every subcommand's
--help shows its options' defaults (tests/integration/test_submit_checks.py: on Redis).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import pytest

from cli.main import build_parser
from core.contract import MAX_SOURCE_CHARS, source_problem
from tests.support.bad_sources import BAD_SOURCES


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
