"""`imgqueue batch` in this process, without Redis: the journal, the rows file after a kill (a
torn last line, what is done, which result keys may be left), what a resume sends again, the
sources' order, the window, Parquet, the summary."""

from __future__ import annotations

import io
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from core.errors import BatchConflict
from producer import Client
from producer.batch import _resume
from producer.batch_output import to_parquet
from producer.batch_report import Progress, Tally, summary
from producer.batch_rows import ended
from producer.batch_sources import Feed, Spec, iter_sources, resolve
from producer.batch_state import Journal, Rows, index_of, paths_for, recover
from producer.batch_window import MAX_IN_FLIGHT, MIN_MESSAGES, Window
from tests.support.batch_rows import BATCH, row


def test_a_torn_last_line_is_cut_and_the_whole_rows_are_done(tmp_path: Path) -> None:
    rows = tmp_path / "out.jsonl"
    whole = row(2) + row(0, "FAILURE", "gone.png") + row(5)
    rows.write_bytes(whole + row(1)[:40])  # killed in the middle of a write
    scan = recover(rows, BATCH, keep_tail=2)
    assert rows.read_bytes() == whole
    assert [i for i, d in enumerate(scan.done) if d] == [0, 2, 5]
    assert scan.tally.by_state == {"SUCCESS": 2, "FAILURE": 1}
    assert scan.tally.by_error == {"SourceNotFound": 1}
    assert scan.tally.failures[0].source == "gone.png"
    assert list(scan.tail) == [f"{BATCH}-0", f"{BATCH}-5"]  # their keys may still be there
    rows.write_bytes(row(3)[:10])  # not one whole line
    assert not any(recover(rows, BATCH, 10).done) and rows.read_bytes() == b""


def test_a_row_holds_the_result_or_the_error_as_submit_wait_prints_it() -> None:
    """A success's result is copied as stored (the worker's layout) or re-encoded (any other):
    the same row either way; a job not ended has none."""
    result = {"source": 'a "b".png', "predictions": [{"label": "été", "p": 0.5}]}
    stored = {"status": "SUCCESS", "result": result, "traceback": None, "task_id": "x"}
    for raw in (
        json.dumps(stored),
        json.dumps(stored, indent=1),
        json.dumps(stored, separators=(",", ":")),
    ):
        row = ended(3, f"{BATCH}-3", "a.png", raw.encode())
        assert row is not None and row.state == "SUCCESS" and row.error is None
        assert json.loads(row.line) == {
            "id": f"{BATCH}-3",
            "state": "SUCCESS",
            "source": "a.png",
            "result": result,
        }
    failed = {"status": "FAILURE", "result": {"exc_type": "NotAnImage", "exc_message": ["bad"]}}
    row = ended(4, f"{BATCH}-4", "b.png", json.dumps(failed).encode())
    assert row is not None and row.error == {"type": "NotAnImage", "message": "bad"}
    assert json.loads(row.line)["error"] == row.error
    assert ended(5, f"{BATCH}-5", "c.png", b'{"status": "STARTED", "result": null}') is None


def test_rows_of_another_batch_or_twice_the_same_source_are_refused(tmp_path: Path) -> None:
    rows = tmp_path / "out.jsonl"
    rows.write_bytes(row(1) + row(1))
    with pytest.raises(BatchConflict, match="second row for index 1"):
        recover(rows, BATCH, 10)
    rows.write_bytes(row(1).replace(BATCH.encode(), b"c" * 32))
    with pytest.raises(BatchConflict, match="another batch"):
        recover(rows, BATCH, 10)
    rows.write_bytes(b"not json\n")
    with pytest.raises(BatchConflict, match="not a JSON row"):
        recover(rows, BATCH, 10)
    assert index_of(f"{BATCH}-12", BATCH) == 12 and index_of("x-12", BATCH) is None
    first = Rows(rows)  # a second batch process on the same file is refused
    with pytest.raises(BatchConflict, match="another imgqueue batch"):
        Rows(rows)
    first.close()
    Rows(rows).close()


def test_the_journal_round_trips_and_a_missing_one_is_said(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl.batch"
    journal = Journal(BATCH, "out.jsonl", [{"given": "m", "kind": "manifest", "path": "/m"}], {})
    journal.sending, journal.sent = 128, 64
    journal.save(path)
    assert Journal.load(path) == journal and not list(tmp_path.glob("*.partial"))
    with pytest.raises(BatchConflict, match="does not exist"):
        Journal.load(tmp_path / "none.batch")
    path.write_text('{"format": 99}')
    with pytest.raises(BatchConflict, match="format"):
        Journal.load(path)


def test_where_a_batch_keeps_its_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    plain = paths_for("out.jsonl")
    assert plain.rows == tmp_path / "out.jsonl" and plain.journal == tmp_path / "out.jsonl.batch"
    parquet = paths_for("out.parquet")
    assert parquet.rows == tmp_path / "out.parquet.partial.jsonl" and parquet.is_parquet
    remote = paths_for("s3://bucket/run/out.parquet")
    assert not remote.is_local and remote.rows.parent == tmp_path
    assert remote.journal.name.startswith("imgqueue-batch-")
    with pytest.raises(BatchConflict, match=r"\.jsonl or \.parquet"):
        paths_for("out.csv")


def test_sources_keep_one_order_and_their_digest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "imgs" / "b").mkdir(parents=True)
    for name in ("imgs/z.jpg", "imgs/a.PNG", "imgs/notes.txt", "imgs/b/c.jpg", "imgs/b/a.gif"):
        (tmp_path / name).write_bytes(b"x")
    manifest = tmp_path / "list.txt"
    manifest.write_text("  one.jpg \n\nhttp://h/two.jpg\n")
    monkeypatch.chdir(tmp_path)
    spool = tmp_path / "out.stdin"
    specs = resolve(["list.txt", "imgs", "-"], io.StringIO("s.jpg\nt.jpg"), spool)
    assert [s.kind for s in specs] == ["manifest", "directory", "manifest"]
    listed = list(iter_sources(specs))
    assert listed == [
        "one.jpg",
        "http://h/two.jpg",
        "imgs/a.PNG",
        "imgs/z.jpg",
        "imgs/b/a.gif",
        "imgs/b/c.jpg",
        "s.jpg",
        "t.jpg",
    ]
    assert [s.given for s in map(Spec.from_dict, [s.to_dict() for s in specs])][2] == "-"
    here = list(iter_sources(resolve(["."], io.StringIO(), spool)))
    assert here[:2] == ["imgs/a.PNG", "imgs/z.jpg"]  # as `imgqueue submit .` names them
    first = Feed(iter(listed), lambda i: i in (1, 2))
    assert first.take(3) == [(0, "one.jpg"), (3, "imgs/z.jpg"), (4, "imgs/b/a.gif")]
    again = Feed(iter(listed), lambda i: False)
    again.take(5)
    assert again.digest() == first.digest() and again.index == first.index == 5
    with pytest.raises(BatchConflict, match="object-store prefix"):
        resolve(["http://h/one.jpg"], io.StringIO(), spool)
    with pytest.raises(BatchConflict, match="no such manifest"):
        resolve(["missing.txt"], io.StringIO(), spool)


def resume_with(journal: Journal, sources: list[str], done: set[int]) -> tuple[Any, Any]:
    written: list[tuple[int, str]] = []
    loop = SimpleNamespace(
        done=bytearray(1 if i in done else 0 for i in range(len(sources))),
        flying={},
        write_invalid=written.extend,
    )
    resend = _resume(Feed(iter(sources), lambda i: i in done), journal, loop)  # type: ignore[arg-type]
    return loop, (resend, written)


def test_a_resume_collects_what_was_sent_and_sends_again_only_what_may_not_have_been() -> None:
    sources = [f"s{i}.png" for i in range(10)]
    sources[7] = "bad\tname.png"  # outside the contract: a row, never sent
    sources[6] = "s3://bucket/more/"  # a prefix among a manifest's lines: the same
    digest = Feed(iter(sources), lambda i: False)
    digest.take(9)
    journal = Journal(BATCH, "o", [], {}, sending=9, sent=5, fingerprint=digest.digest())
    loop, (resend, written) = resume_with(journal, sources, done={0, 2, 6})
    assert loop.flying == {1: "s1.png", 3: "s3.png", 4: "s4.png"}
    assert resend == [(5, "s5.png"), (8, "s8.png")]
    assert [(i, s) for i, s, _ in written] == [(7, "bad\tname.png")]
    loop, (resend, written) = resume_with(journal, sources, done={0, 2})
    assert [(i, why[:25]) for i, _, why in written] == [
        (6, "an object-store prefix na"),
        (7, "source contains a control"),
    ]
    changed = [*sources[:3], "other.png", *sources[4:]]
    with pytest.raises(BatchConflict, match="sources changed"):
        resume_with(journal, changed, done=set())
    with pytest.raises(BatchConflict, match="sources changed"):
        resume_with(journal, sources[:6], done=set())


def test_the_window_is_fixed_or_follows_the_measured_rate() -> None:
    assert Window(100, 64).size == 100
    window = Window(None, 64)
    assert window.size == MIN_MESSAGES * 64
    window._since -= 2.0  # 100,000 jobs ended in the last 2 s: 50,000/s
    window.ended(100_000)
    assert window.size == MAX_IN_FLIGHT
    window._since -= 2.0
    window.ended(2_000)  # 1,000/s: it shrinks by half at most
    assert window.size == MAX_IN_FLIGHT // 2


def test_parquet_has_one_row_per_source_in_index_order(tmp_path: Path) -> None:
    import pyarrow.parquet as pq  # type: ignore[import-untyped]

    rows = tmp_path / "rows.jsonl"
    rows.write_bytes(row(2) + row(0, "FAILURE", "gone.png") + row(1))
    dest = tmp_path / "out.parquet"
    to_parquet(rows, dest, 3)
    table = pq.read_table(dest).to_pylist()
    assert [r["index"] for r in table] == [0, 1, 2]
    assert table[0]["error_type"] == "SourceNotFound" and table[0]["result"] is None
    assert json.loads(table[1]["result"]) == {"predictions": []} and table[1]["source"] == "s1.png"
    with pytest.raises(BatchConflict, match="no row for source"):
        to_parquet(rows, dest, 4)


def test_the_summary_and_the_bar_say_counts_rate_and_eta() -> None:
    tally = Tally()
    for i in range(3):
        tally.add("SUCCESS", i, f"s{i}", None)
    tally.add("FAILURE", 3, "gone.png", {"type": "SourceNotFound", "message": "no such file"})
    text = summary(tally, "out.jsonl", 2.0)
    assert "4 rows in out.jsonl in 2.0s (2.0/s): 1 FAILURE, 3 SUCCESS" in text
    assert "1 failed: SourceNotFound 1" in text and "gone.png  SourceNotFound: no such file" in text
    assert Tally.from_dict(json.loads(json.dumps(tally.to_dict()))) == tally
    stream = io.StringIO()
    bar = Progress(stream, True, 8, 0)
    bar.start -= 2.0
    bar.update(tally, force=True)
    assert "4/8" in stream.getvalue() and "1 failed" in stream.getvalue()
    assert "ETA 0:00:0" in stream.getvalue()


def test_submit_many_takes_the_ids_to_use() -> None:
    client = Client("redis://127.0.0.1:1/0")  # refused before any Redis call
    for ids, why in (
        (["a"], "1 task_ids given for 2"),
        (["a", "a"], "repeat"),
        (["a", ""], "printable"),
    ):
        with pytest.raises(ValueError, match=why):
            client.submit_many(["x.jpg", "y.jpg"], task_ids=ids)
    client.close()
