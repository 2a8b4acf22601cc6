"""`imgqueue batch` without workers, against real servers: the refusal to overwrite a file that
is not the batch's own (and Redis not there at the start), jobs lost while no batch ran sent
again and collected (a real redis-server), and an object store's prefix and output (the
loopback S3)."""

from __future__ import annotations

import io
import json
import threading
import uuid
from pathlib import Path

import pytest
import redis

from core.contract import result_key
from core.errors import BatchConflict
from producer import Client, batch_loop
from producer.batch import Options, open_batch, run_batch
from producer.batch_output import upload
from producer.batch_sources import Feed, iter_sources, resolve
from tests.support.batch_rows import row
from tests.support.cli import run_cli
from tests.support.messages import queued_messages
from tests.support.s3 import BUCKET, S3, SET_IMAGES
from tests.support.waiting import wait_for


def batch_cli(capsys: pytest.CaptureFixture[str], url: str, *args: str) -> tuple[int, str]:
    code, _, err = run_cli(capsys, url, "batch", *args)
    return code, err


def test_a_file_that_is_not_the_batchs_own_is_never_overwritten(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    url = "redis://127.0.0.1:1/0"  # refused before any Redis call
    Path("list.txt").write_text("a.jpg\n")
    Path("mine.jsonl").write_text("precious\n")
    code, err = batch_cli(capsys, url, "list.txt", "--out", "mine.jsonl")
    assert code == 2 and "refusing to overwrite" in err
    assert Path("mine.jsonl").read_text() == "precious\n" and not Path("mine.jsonl.batch").exists()
    Path("mine.parquet").write_text("precious")
    assert batch_cli(capsys, url, "list.txt", "--out", "mine.parquet")[0] == 2
    code, err = batch_cli(capsys, url, "--resume", "other.jsonl")
    assert code == 2 and "no batch to resume" in err
    assert batch_cli(capsys, url, "list.txt", "--out", "out.csv")[0] == 2
    code, err = batch_cli(capsys, url, "list.txt", "--in-flight", "0", "--out", "x.jsonl")
    assert code == 2 and "expected a number of jobs" in err
    # Another batch's output: named, and left alone.
    stdin = io.StringIO()
    first = open_batch("run.jsonl", ["list.txt"], Options(top_k=3), resume=False, stdin=stdin)
    again = open_batch("run.jsonl", ["list.txt"], Options(top_k=3), resume=False, stdin=stdin)
    assert again.resumed and again.journal.batch == first.journal.batch
    with pytest.raises(BatchConflict, match="belongs to batch"):
        open_batch("run.jsonl", ["list.txt"], Options(top_k=4), resume=False, stdin=stdin)
    with pytest.raises(BatchConflict, match="belongs to batch"):
        open_batch("run.jsonl", ["-"], None, resume=False, stdin=stdin)
    assert open_batch("run.jsonl", [], None, resume=True, stdin=stdin).resumed
    # No Redis there at the start: said at once (exit 3), the batch left to resume.
    code, err = batch_cli(capsys, url, "list.txt", "--out", "later.jsonl")
    assert code == 3 and err.splitlines()[-1].startswith("error: cannot reach Redis"), err
    assert "--resume later.jsonl" in err and Path("later.jsonl.batch").exists()


def test_jobs_lost_while_no_batch_ran_are_sent_again_and_collected(
    redis_url: str,
    redis_client: redis.Redis,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A resumed batch whose jobs in flight have no state and an empty queue (their results
    expired, say) sends them again; a stand-in for a worker (results written to Redis) ends
    them, and the batch writes their rows and deletes their keys."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(batch_loop, "STALL_S", 0.3)
    queue = f"batch-{uuid.uuid4().hex[:8]}"  # no worker reads it
    Path("list.txt").write_text("a.jpg\nb.jpg\nc.jpg\n")
    job = open_batch(
        "out.jsonl", ["list.txt"], Options(queue=queue), resume=False, stdin=io.StringIO()
    )
    feed = Feed(iter(["a.jpg", "b.jpg", "c.jpg"]), lambda i: False)
    feed.take(3)
    job.journal.sending = job.journal.sent = 3  # all sent before a kill, then lost
    job.journal.fingerprint = feed.digest()
    job.journal.save(job.paths.journal)
    ids = [f"{job.journal.batch}-{i}" for i in range(3)]

    def stand_in_worker() -> None:
        wait_for(lambda: queued_messages(redis_client, [queue]), 10, "the jobs sent again")
        for key in queued_messages_keys(queue):
            redis_client.delete(key)
        for task_id in ids:
            meta = {"status": "SUCCESS", "result": {"source": task_id}}
            redis_client.set(result_key(task_id), json.dumps(meta))

    said: list[str] = []
    worker = threading.Thread(target=stand_in_worker)
    worker.start()
    with Client(redis_url) as client:
        tally = run_batch(
            client,
            open_batch("out.jsonl", [], None, resume=True, stdin=io.StringIO()),
            say=said.append,
        )
    worker.join()
    assert tally.by_state == {"SUCCESS": 3} and "sending them again" in said[0]
    rows = [json.loads(line) for line in Path("out.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == ids and rows[0]["result"]["source"] == rows[0]["id"]
    assert not any(redis_client.exists(result_key(t)) for t in ids)


def queued_messages_keys(queue: str) -> list[str]:
    from core.contract import PRIORITY_STEPS, queue_list

    return [queue_list(queue, priority) for priority in PRIORITY_STEPS]


def test_an_object_store_prefix_and_output(
    s3_env: S3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    specs = resolve([f"s3://{BUCKET}/set/"], io.StringIO(), tmp_path / "x.stdin")
    assert list(iter_sources(specs)) == [f"s3://{BUCKET}/{key}" for key in SET_IMAGES]
    s3_env.client.put_object(Bucket=BUCKET, Key="runs/taken.jsonl", Body=b"x")
    with pytest.raises(BatchConflict, match="exists"):
        open_batch(
            f"s3://{BUCKET}/runs/taken.jsonl", ["-"], None, resume=False, stdin=io.StringIO()
        )
    rows = tmp_path / "rows.jsonl"
    rows.write_bytes(row(0))
    upload(f"s3://{BUCKET}/runs/out.jsonl", rows)
    body = s3_env.client.get_object(Bucket=BUCKET, Key="runs/out.jsonl")["Body"].read()
    assert body == row(0)
