"""The command line never loses what it sent, never destroys a file on a typo, never shows a
traceback: waits that fail print every id, `results --out` replaces its file only once it is
written, a server that is not Redis is one line and exit 3, a closed pipe is a quiet exit 141,
and the exit statuses are one table that docs/producing.md repeats."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.exceptions import InvalidResponse

from cli.exits import MEANINGS, ExitStatus, status_for
from core.contract import result_key
from core.errors import (
    BrokerUnavailable,
    ConfigError,
    InvalidSource,
    ProducerError,
    QueueFull,
    RedisFull,
    ResultTimeout,
    UnknownGroup,
    UnknownModel,
    UploadTooLarge,
)
from core.lifecycle import EVENTS_STREAM
from producer import Client
from tests.support.cli import run_cli
from tests.support.messages import queued_messages
from tests.support.paths import ROOT
from tests.support.ports import free_port
from tests.support.redis_server import RedisServer
from tests.support.tcp import tcp_server

DB = 12
URL = "http://127.0.0.1:9/{}.jpg"  # never fetched: no worker runs here


@pytest.fixture
def url(redis_server: RedisServer) -> Iterator[str]:
    r = redis.Redis.from_url(redis_server.url(DB))
    r.flushdb()
    yield redis_server.url(DB)
    r.flushdb()
    r.close()


@pytest.fixture
def r(url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(url)
    yield client
    client.close()


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


@contextlib.contextmanager
def loopback_server(reply: bytes | None) -> Iterator[str]:
    """A loopback TCP server that reads what each connection sends first, answers `reply`
    (None: nothing) and hangs up; yields a redis:// URL to it."""

    def serve(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.settimeout(5)
            if reply is not None:
                conn.recv(65536)
                conn.sendall(reply)
            conn.shutdown(socket.SHUT_WR)
            while conn.recv(65536):  # until the client hangs up: no reset loses the reply
                pass

    with tcp_server(serve) as port:
        yield f"redis://127.0.0.1:{port}/0"


@pytest.fixture(scope="module")
def not_redis() -> Iterator[str]:
    """An HTTP server, as far as a Redis client can tell: its first command gets a 400."""
    with loopback_server(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n") as url:
        yield url


@pytest.fixture(scope="module")
def hangs_up() -> Iterator[str]:
    """A port that accepts each connection, then closes it unanswered."""
    with loopback_server(None) as url:
        yield url


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


def test_the_process_shows_no_traceback(not_redis: str) -> None:
    done = _imgqueue(not_redis, "status")
    assert done.returncode == ExitStatus.UNAVAILABLE
    assert done.stderr.startswith("error: cannot reach Redis at ")
    assert "Traceback" not in done.stderr
    assert "not a Redis server?" in done.stderr and len(done.stderr.splitlines()) == 1


def test_a_malformed_url_is_a_usage_error(capsys: pytest.CaptureFixture[str], url: str) -> None:
    code, _, err = run_cli(capsys, "http://x", "status")
    assert code == ExitStatus.USAGE and err.startswith("error: REDIS_URL must start with")
    args = ("--result-url", "redis-cluster://a:b:c", "result", "an-id")
    code, _, err = run_cli(capsys, url, *args)
    assert code == ExitStatus.USAGE and err.startswith("error: RESULT_URL: bad node")
    with pytest.raises(ConfigError) as caught:
        Client("http://x")
    assert isinstance(caught.value, ProducerError)  # as before, for callers that catch that


# -- a closed pipe -----------------------------------------------------------------------------


def _imgqueue(url: str, *args: str, stdin: Any = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "REDIS_URL": url}
    return subprocess.run(
        [sys.executable, "-m", "producer", *args],
        env=env,
        stdin=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _read_one_line_then_close(url: str, *args: str, stdin: Any = None) -> tuple[int, str, str]:
    """As `imgqueue ARGS | head -1`: the exit status, the line read and stderr."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "REDIS_URL": url}
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "producer", *args],
            env=env,
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=err,
        )
        assert proc.stdout is not None
        first = proc.stdout.readline().decode()
        proc.stdout.close()  # more than a pipe's buffer is still to come: the next write fails
        code = proc.wait(timeout=60)
        err.seek(0)
        return code, first, err.read().decode()


def test_a_closed_pipe_ends_submit_quietly(url: str, tmp_path: Path) -> None:
    sources = tmp_path / "sources.txt"
    sources.write_text("".join(URL.format(i) + "\n" for i in range(5000)))  # 185 KB of ids
    with sources.open() as stdin:
        code, first, err = _read_one_line_then_close(url, "submit", "-", stdin=stdin)
    assert (code, err) == (ExitStatus.BROKEN_PIPE, "")
    assert re.fullmatch(r"[0-9a-f-]{36}\n", first)


def test_a_closed_pipe_ends_events_quietly(url: str, r: redis.Redis) -> None:
    pipe = r.pipeline(transaction=False)
    for i in range(3000):
        pipe.xadd(EVENTS_STREAM, {"kind": "job", "id": f"t{i}", "state": "SUCCESS"})
    pipe.execute()
    args = ("events", "--since", "0", "--timeout", "30")
    code, first, err = _read_one_line_then_close(url, *args)
    assert (code, err) == (ExitStatus.BROKEN_PIPE, "")
    assert json.loads(first)["id"] == "t0"


# -- the table of exit statuses ----------------------------------------------------------------


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
