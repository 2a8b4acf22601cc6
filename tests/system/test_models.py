"""Your own models served by real workers: a fine-tuned head answers with its own labels, a
checkpoint that does not fit stops the worker before any job, and a rollout under load; and
a packed model's files read by another uid (a process), as the compose worker reads them."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest
import redis

from core.contract import DEFAULT_QUEUE
from producer import Client
from tests.support.models import (
    DEFECTS,
    TINY,
    made_fixture,  # noqa: F401  (the fixture `made`)
    pack_under_umask_077,
)
from tests.support.waiting import wait_for
from tests.support.workers import WorkerFactory, WorkerProcess
from worker.deliveries import delivery_key
from worker.model.labels import labels_id
from worker.model.pack import pack

# -- served by real workers -------------------------------------------------------------------


@pytest.fixture(scope="module")
def cards(made: Path) -> dict[str, Path]:
    """Packed models: a 3-class ResNet-50 `defects`, and `tiny` (SqueezeNet) versions 1 and 2."""
    out = {"defects": made / "card-defects"}
    pack(made / "defects.pt", arch="resnet50", labels=made / "defects.txt", out=out["defects"],
         name="defects", version="2026.11")  # fmt: skip
    for version in ("1", "2"):
        out[f"tiny-v{version}"] = made / f"card-tiny-v{version}"
        pack(made / f"tiny-v{version}.pt", arch="squeezenet1_1", labels=made / "tiny.txt",
             out=out[f"tiny-v{version}"], name="tiny", version=version)  # fmt: skip
    return out


def serve(workers: WorkerFactory, card: Path) -> WorkerProcess:
    return workers.start(MODEL_CARD=str(card), MODEL_WEIGHTS="")  # the card names its weights


def test_a_checkpoint_that_does_not_fit_stops_the_worker_before_any_job(
    workers: WorkerFactory, made: Path, redis_url: str
) -> None:
    with Client(redis_url, bulk_size=1) as client:
        client.submit("cat.jpg")  # waiting before the worker starts: it must not be taken
    worker = workers.start(wait=False, MODEL_WEIGHTS=str(made / "defects.pt"))
    assert worker.proc.wait(120) != 0
    log = worker.log()
    assert "worker cannot start" in log
    assert "the checkpoint's head (fc.weight) has 3 outputs" in log and "MODEL_LABELS" in log
    r = redis.Redis.from_url(redis_url)
    assert r.llen(DEFAULT_QUEUE) == 1
    r.delete(DEFAULT_QUEUE)
    r.close()


def test_labels_that_do_not_fit_the_head_are_refused_once_naming_the_file_and_both_counts(
    workers: WorkerFactory, cards: dict[str, Path], tmp_path: Path
) -> None:
    card = tmp_path / "relabelled"
    shutil.copytree(cards["tiny-v1"], card)
    (card / "labels.json").write_text(json.dumps(TINY[:3]))  # the head has 4 outputs
    worker = workers.start(wait=False, MODEL_CARD=str(card), MODEL_WEIGHTS="")
    assert worker.proc.wait(120) != 0
    card = card.resolve()
    message = (
        f"worker cannot start: the weights {card / 'weights.pt'}: the checkpoint's head "
        f"(classifier.1.weight) has 4 outputs; the labels file {card / 'labels.json'} (of "
        f"MODEL_CARD {card / 'model.json'}) has 3 labels"
    )
    # stdout and stderr together: logged and raised, it was said twice.
    assert worker.log().count(message) == 1, worker.log()[-2000:]
    assert worker.log().count("worker cannot start") == 1


def test_a_fine_tuned_resnet50_answers_with_its_own_labels(
    workers: WorkerFactory, cards: dict[str, Path], redis_url: str
) -> None:
    worker = serve(workers, cards["defects"])
    with Client(redis_url) as client:
        ids = client.submit_many(["cat.jpg", "rocket.jpg"], top_k=3, model="defects")
        outcomes = list(client.wait(ids, timeout=120))
    assert {o.state for o in outcomes} == {"SUCCESS"}, [o.result for o in outcomes]
    for outcome in outcomes:
        result = outcome.result
        assert {p["label"] for p in result["predictions"]} == set(DEFECTS)
        assert sum(p["probability"] for p in result["predictions"]) == pytest.approx(1, abs=1e-5)
        assert result["model"] == "defects" and result["arch"] == "resnet50"
        assert result["version"] == "2026.11" and result["labels"] == labels_id(DEFECTS)
        assert result["weights"].startswith("file:")
    # One line at start says what the worker serves, as its results do.
    lines = [line for line in worker.log().splitlines() if "serving model" in line]
    assert len(lines) == 1, lines
    served = lines[0].split("serving model ", 1)[1].split()
    fields = dict(field.split("=", 1) for field in served[1:])
    assert served[0] == "defects" and float(fields.pop("load").removesuffix("s")) > 0
    facts = ("version", "arch", "weights", "labels", "backend", "precision", "device")
    assert fields == {**{k: str(result[k]) for k in facts}, "batch": "8"}
    assert (fields["backend"], fields["precision"], fields["device"]) == ("torch", "fp32", "cpu")


def test_rolling_out_a_new_version_under_load_loses_nothing_and_runs_nothing_twice(
    workers: WorkerFactory, cards: dict[str, Path], redis_url: str
) -> None:
    """Version 1 serves; version 2 joins the same queue; version 1 gets SIGTERM (a rolling
    deployment's warm shutdown) while jobs keep coming."""
    old = serve(workers, cards["tiny-v1"])
    ids: list[str] = []
    done = threading.Event()
    with Client(redis_url, bulk_size=1) as client:

        def produce() -> None:
            while not done.is_set():
                ids.extend(client.submit_many(["cat.jpg", "rocket.jpg"], top_k=2, model="tiny"))
                done.wait(0.1)

        producer = threading.Thread(target=produce)
        producer.start()
        try:
            wait_for(lambda: len(ids) >= 10, 30, "jobs under way")
            serve(workers, cards["tiny-v2"])
            old.kill(signal.SIGTERM)
            assert old.proc.wait(60) == 0
        finally:
            done.set()
            producer.join()
        outcomes = list(client.wait(ids, timeout=120))
        counts = client.redis.mget([delivery_key(t, 0) for t in ids])
    assert len(outcomes) == len(ids) and {o.state for o in outcomes} == {"SUCCESS"}
    versions = [o.result["version"] for o in outcomes]
    assert set(versions) == {"1", "2"}, "both versions served during the rollout"
    assert {o.result["arch"] for o in outcomes} == {"squeezenet1_1"}
    assert {p["label"] for o in outcomes for p in o.result["predictions"]} <= set(TINY)
    assert max(int(c or 0) for c in counts) == 1, "a job ran twice"


# -- a packed model, read by another uid -------------------------------------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="reading as another uid needs root to switch")
def test_another_uid_reads_a_packed_model(made: Path) -> None:
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user nobody to read the files as")
    # pytest's tmp_path is 0700: nobody could not reach anything under it.
    with tempfile.TemporaryDirectory() as top:
        os.chmod(top, 0o755)  # the mount point, as ./models would be
        out = Path(top) / "models" / "tiny"
        pack_under_umask_077(made, out)
        files = [str(out / name) for name in ("model.json", "weights.pt", "labels.json")]
        # cat, not Python: the interpreter may sit where nobody cannot reach it (/root).
        read = subprocess.run(
            ["cat", *files], user=nobody.pw_uid, group=nobody.pw_gid, extra_groups=[],
            capture_output=True, check=False,
        )  # fmt: skip
    assert read.returncode == 0, read.stderr
    assert read.stdout.startswith(b"{") and len(read.stdout) > 1_000_000  # weights.pt too
