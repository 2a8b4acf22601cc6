"""The command line (in this process) never loses what it sent, never destroys a file on a typo:
waits that fail print every id, `results --out` replaces its file only once it is written, a
server that is not Redis is one line and exit 3, a malformed URL exit 2. Against the session's
redis-server and loopback servers that are not Redis."""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path
from typing import Any

import pytest
import redis

from cli.exits import ExitStatus
from core.contract import result_key
from core.errors import (
    ConfigError,
    ProducerError,
    ResultTimeout,
)
from producer import Client
from tests.support.cli import run_cli
from tests.support.cli_robust import (
    URL,
    hangs_up_fixture,  # noqa: F401  (the fixture `hangs_up`)
    not_redis_fixture,  # noqa: F401  (the fixture `not_redis`)
    r_fixture,  # noqa: F401  (the fixture `r`)
    url_fixture,  # noqa: F401  (the fixture `url`)
)
from tests.support.messages import queued_messages
from tests.support.ports import free_port


def lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines()]


# -- a wait that fails prints every id ---------------------------------------------------------


def test_a_submit_wait_that_times_out_prints_every_id_it_sent(
    capsys: pytest.CaptureFixture[str], url: str, r: redis.Redis
) -> None:
    sources = [URL.format(i) for i in range(3)]
    args = ("submit", "--wait", "--timeout", "0.3", "--bulk-size", "1", "--queue", "robust")
    code, out, err = run_cli(capsys, url, *args, *sources)
    assert code == ExitStatus.UNAVAILABLE
    assert err.strip().splitlines()[-1].startswith("error: 3 job(s) unfinished")
    printed = lines(out)
    assert [line["state"] for line in printed] == ["PENDING"] * 3
    sent = {json.loads(m)["headers"]["id"] for m in queued_messages(r, ["robust"])}
    assert {line["id"] for line in printed} == sent and len(sent) == 3


def test_a_result_wait_prints_the_finished_and_the_last_state_of_the_rest(
    capsys: pytest.CaptureFixture[str], url: str, r: redis.Redis
) -> None:
    r.set(result_key("done-1"), json.dumps({"status": "SUCCESS", "result": {"top": "cat"}}))
    r.set(result_key("running-1"), json.dumps({"status": "STARTED", "result": {"pid": 1}}))
    code, out, err = run_cli(
        capsys, url, "result", "--wait", "--timeout", "0.3", "never-1", "running-1", "done-1"
    )
    assert code == ExitStatus.UNAVAILABLE and "2 job(s) unfinished" in err
    assert lines(out) == [
        {"id": "done-1", "state": "SUCCESS", "result": {"top": "cat"}},
        {"id": "never-1", "state": "PENDING"},
        {"id": "running-1", "state": "STARTED"},
    ]
    with Client(url) as client, pytest.raises(ResultTimeout) as caught:
        list(client.wait(["never-1", "done-1", "running-1"], timeout=0.2))
    assert [(o.task_id, o.state) for o in caught.value.unfinished] == [
        ("never-1", "PENDING"),
        ("running-1", "STARTED"),
    ]


def test_a_group_wait_that_times_out_shows_the_group_and_every_id(
    capsys: pytest.CaptureFixture[str], url: str
) -> None:
    sources = [URL.format(i) for i in range(2)]
    code, out, err = run_cli(
        capsys, url, "submit", "--group", "--wait", "--timeout", "0.3", *sources
    )
    assert code == ExitStatus.UNAVAILABLE
    found = re.search(r"^group (\S+)$", err, re.MULTILINE)
    assert found, err
    code, exported, _ = run_cli(capsys, url, "results", found.group(1))
    assert code == ExitStatus.JOB_FAILED  # none has ended
    assert {line["id"] for line in lines(out)} == {line["id"] for line in lines(exported)}
    assert len(lines(out)) == 2


def test_a_submit_wait_whose_result_store_is_lost_prints_every_id(
    capsys: pytest.CaptureFixture[str], url: str, not_redis: str
) -> None:
    sources = [URL.format(i) for i in range(2)]
    for results in (f"redis://127.0.0.1:{free_port()}/0", not_redis):
        args = ("--result-url", results, "submit", "--wait", "--timeout", "0.5", *sources)
        code, out, err = run_cli(capsys, url, *args)
        assert code == ExitStatus.UNAVAILABLE, err
        assert [line["state"] for line in lines(out)] == ["PENDING", "PENDING"]
        assert "cannot reach" in err and len(err.strip().splitlines()) == 1


# -- results --out -----------------------------------------------------------------------------


def test_results_of_an_unknown_group_leave_the_out_file_as_it_was(
    capsys: pytest.CaptureFixture[str], url: str, tmp_path: Path
) -> None:
    out = tmp_path / "results.jsonl"
    before = b"".join(b'{"line": %d}\n' % i for i in range(5))
    out.write_bytes(before)
    code, _, err = run_cli(capsys, url, "results", "TYPO", "--out", str(out))
    assert code == ExitStatus.USAGE and "no group 'TYPO'" in err
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.jsonl"]  # no temp left


def test_results_out_replaces_the_file_once_written_and_keeps_its_mode(
    capsys: pytest.CaptureFixture[str], url: str, tmp_path: Path
) -> None:
    code, group_id, _ = run_cli(capsys, url, "submit", "--group", URL.format(1), URL.format(2))
    assert code == ExitStatus.OK
    out = tmp_path / "results.jsonl"
    out.write_text("old\n" * 5)
    out.chmod(0o640)
    code, _, err = run_cli(capsys, url, "results", group_id.strip(), "--out", str(out))
    assert code == ExitStatus.JOB_FAILED, err  # written: neither job has ended
    assert [line["state"] for line in lines(out.read_text())] == ["PENDING", "PENDING"]
    assert stat.S_IMODE(out.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.jsonl"]
    code, _, err = run_cli(capsys, url, "results", "g", "--out", str(tmp_path / "no" / "f"))
    assert code == ExitStatus.USAGE and err.startswith("error: cannot write --out")


def test_cancel_of_an_unknown_group_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], url: str
) -> None:
    code, out, err = run_cli(capsys, url, "cancel", "--group", "nosuch")
    assert (code, out) == (ExitStatus.USAGE, "")
    assert err == "error: no group 'nosuch' (never created, or expired with its results)\n"


# -- a server that is not Redis: one line, exit 3; a malformed URL: exit 2 -----------------------


COMMANDS = [
    ("submit", URL.format("a")),
    ("status", "--timeout", "0.2"),
    ("result", "an-id"),
    ("result", "--wait", "--timeout", "0.3", "an-id"),
    ("results", "a-group"),
    ("events", "--since", "0", "--timeout", "0.3"),
    ("cancel", "an-id"),
    ("limits", "list"),
    ("dead-letters", "list"),
    ("model", "list"),
]


@pytest.mark.parametrize("server", ["not_redis", "hangs_up"])
def test_every_command_says_in_one_line_that_redis_is_not_there(
    capsys: pytest.CaptureFixture[str], request: pytest.FixtureRequest, server: str
) -> None:
    where = request.getfixturevalue(server)
    for args in COMMANDS:
        code, _, err = run_cli(capsys, where, *args)
        assert code == ExitStatus.UNAVAILABLE, (args, err)
        assert re.fullmatch(r"error: [^\n]*cannot reach [^\n]+\n", err), (args, err)


RESULT_COMMANDS = [
    ("submit", "--group", URL.format("a")),
    ("result", "an-id"),
    ("results", "a-group"),
    ("events", "--since", "0", "--timeout", "0.3"),
    ("cancel", "an-id"),
]


def test_a_result_store_that_is_not_redis_is_one_line_too(
    capsys: pytest.CaptureFixture[str], url: str, not_redis: str
) -> None:
    for args in RESULT_COMMANDS:
        code, _, err = run_cli(capsys, url, "--result-url", not_redis, *args)
        assert code == ExitStatus.UNAVAILABLE, (args, err)
        assert re.fullmatch(r"error: [^\n]*cannot reach [^\n]+\n", err), (args, err)


def test_a_malformed_url_is_a_usage_error(capsys: pytest.CaptureFixture[str], url: str) -> None:
    code, _, err = run_cli(capsys, "http://x", "status")
    assert code == ExitStatus.USAGE and err.startswith("error: REDIS_URL must start with")
    args = ("--result-url", "redis-cluster://a:b:c", "result", "an-id")
    code, _, err = run_cli(capsys, url, *args)
    assert code == ExitStatus.USAGE and err.startswith("error: RESULT_URL: bad node")
    with pytest.raises(ConfigError) as caught:
        Client("http://x")
    assert isinstance(caught.value, ProducerError)  # as before, for callers that catch that
