"""Results on a Redis Cluster (RESULT_URL=redis-cluster://...), without workers: the backend keeps
the guarantees it keeps on one Redis (FAILURE never overwritten by a late STARTED, group counters
and events, the result cache, cancels), confirms final states on a replica, follows moved slots;
status, the exporter and the shipped ACL users see every master; the webhook outbox announces
once what a store killed part way left (tests/system/test_cluster.py: real workers).

The cluster is real: six `redis-server --cluster-enabled yes` on loopback (three masters, a
replica each), made one by `redis-cli --cluster create` (tests/support/redis_cluster.py)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery, states

from core.connections import (
    RedisConfig,
    ResultStoreConfig,
    is_cluster_client,
    mget,
)
from core.contract import result_key
from core.keys import outbox_key
from core.lifecycle import EVENTS_STREAM
from producer import Client, groups
from producer.status import gather, render
from services.exporter import QueueCollector
from services.webhooks.sweeper import Sweeper
from tests.support.cluster_results import (
    broker_fixture,  # noqa: F401  (the fixture `broker`)
    by_master,
    cluster_fixture,  # noqa: F401  (the fixture `cluster`)
)
from tests.support.paths import ROOT
from tests.support.redis_cluster import RedisClusterNodes
from tests.support.redis_server import RedisServer
from tests.support.waiting import wait_for
from worker import cache, events
from worker.results_cluster import ClusterResultBackend
from worker.settings import Settings

# -- a real cluster --------------------------------------------------------------------------


@pytest.fixture
def backend(cluster: RedisClusterNodes) -> Iterator[ClusterResultBackend]:
    app = Celery("cluster-backend-test", backend=f"{_BACKEND}+{cluster.url()}")
    app.conf.update(result_expires=600, result_failure_expires=60)
    instance = app.backend
    assert isinstance(instance, ClusterResultBackend)
    yield instance
    app.close()


_BACKEND = "worker.results_cluster:ClusterResultBackend"


def test_failure_is_never_overwritten_by_a_late_started_on_a_cluster(
    backend: ClusterResultBackend, cluster: RedisClusterNodes
) -> None:
    ids = [f"f-{i}" for i in range(48)]  # enough keys to span every master
    backend.store_many([(i, ValueError("the image is corrupt"), states.FAILURE) for i in ids])
    keys = [backend.get_key_for_task(i).decode() for i in ids]
    assert all(n > 0 for n in by_master(cluster, keys).values()), "keys on every master"
    for task_id in ids[:8]:
        # A redelivered duplicate starting, or retrying, after the job has already failed.
        backend.store_result(task_id, {"pid": 3}, states.STARTED)
        backend.mark_as_retry(task_id, ValueError("transient"))
    backend.store_many([(i, {"late": True}, states.STARTED) for i in ids[8:16]])
    metas = [json.loads(raw) for raw in mget(backend.client, keys)]
    assert {m["status"] for m in metas} == {"FAILURE"}
    assert all("corrupt" in str(m["result"]) for m in metas)
    assert 0 < backend.client.ttl(keys[0]) <= 60  # RESULT_FAILURE_EXPIRES
    # A FAILURE can still become a SUCCESS (a copy that got through); a SUCCESS is final.
    backend.store_many([(i, {"predictions": [1]}, states.SUCCESS) for i in ids])
    backend.mark_as_failure(ids[0], ValueError("late duplicate"))
    backend.store_result(ids[1], {"pid": 4}, states.STARTED)
    metas = [json.loads(raw) for raw in mget(backend.client, keys)]
    assert {m["status"] for m in metas} == {"SUCCESS"}
    assert 60 < backend.client.ttl(keys[0]) <= 600
    # Every final state was confirmed by a replica (WAIT), and nothing was published.
    assert backend.unconfirmed == 0
    assert backend.get_task_meta(ids[2])["result"] == {"predictions": [1]}


def test_group_counters_and_events_on_a_cluster(
    backend: ClusterResultBackend, cluster: RedisClusterNodes
) -> None:
    """The group's keys on one master (one hash tag), the stream on its own, results spread:
    jobs stored twice count once, and the last one appends one group event."""
    from celery.app.task import Context

    from core.lifecycle import EVENTS_STREAM, GROUP_HEADER
    from producer.groups import create, keys

    gid, ids = "cluster-group", [f"g-{i}" for i in range(24)]
    create(backend.client, gid, ids, queue="celery")
    bulk = Context(
        {
            "id": "bulk",
            "task": "classify_many",
            "delivery_info": {"routing_key": "celery"},
            GROUP_HEADER: gid,
            "args": [[{"id": i, "source": "x"} for i in ids]],
        }
    )
    backend.store_many([(i, ValueError("bad"), states.FAILURE) for i in ids[:4]], request=bulk)
    for _ in range(2):  # a redelivered bulk stores them all again
        backend.store_many([(i, {"p": 1}, states.SUCCESS) for i in ids], request=bulk)
    meta, done, _ = keys(gid)
    assert backend.client.hmget(meta, "succeeded", "failed", "finished") == [b"24", b"0", b"24"]
    assert backend.client.hlen(done) == 24
    events = [f for _, f in backend.client.xrange(EVENTS_STREAM) if f[b"group"] == gid.encode()]
    jobs = [f[b"id"].decode() for f in events if f[b"kind"] == b"job"]
    assert sorted(jobs) == sorted([*ids, *ids[:4]])  # g-0..3: FAILURE, then SUCCESS
    assert [f[b"kind"] for f in events].count(b"group") == 1
    assert events[-1][b"succeeded"] == b"24"
    # A worker killed between an image's result and its group's call: the result is final, the
    # group never counted it. The redelivered bulk skips the image but counts it (recount).
    late = ["late-1", "late-2"]
    create(backend.client, "g2", late, queue="celery")
    bulk2 = Context({**bulk.__dict__, GROUP_HEADER: "g2", "args": [[{"id": i} for i in late]]})
    backend._store_entries(
        [(backend.get_key_for_task(i), json.dumps({"status": "SUCCESS"}), "SUCCESS") for i in late]
    )
    assert backend.client.hget(keys("g2")[0], "finished") == b"0"
    for _ in range(2):
        backend.recount(late, bulk2)
    assert backend.client.hmget(keys("g2")[0], "succeeded", "finished") == [b"2", b"2"]


def test_a_final_state_returns_only_once_a_replica_has_it(
    backend: ClusterResultBackend, cluster: RedisClusterNodes
) -> None:
    task_id = "durable-1"
    master = backend.client.get_node_from_key(backend.get_key_for_task(task_id)).port
    replica = cluster.procs[cluster.replica_of(master)]
    backend.wait_timeout_ms = 20_000  # far past the test's own waits
    done = threading.Event()
    replica.send_signal(signal.SIGSTOP)  # the replica stops acknowledging
    try:
        # A STARTED state is not waited for; a final one is, until the replica has it.
        backend.store_result(task_id, {"pid": 1}, states.STARTED)

        def store() -> None:
            backend.store_result(task_id, {"ok": 1}, states.SUCCESS)
            done.set()

        thread = threading.Thread(target=store)
        started = time.monotonic()
        thread.start()
        assert not done.wait(0.5), "the store returned before the replica had the result"
    finally:
        replica.send_signal(signal.SIGCONT)
    assert done.wait(15), "the store did not return once the replica was back"
    thread.join(5)
    assert time.monotonic() - started >= 0.5 and backend.unconfirmed == 0
    assert backend.get_task_meta(task_id)["status"] == "SUCCESS"


def _node_ids(cluster: RedisClusterNodes) -> dict[int, str]:
    return {int(n["port"]): n["id"] for n in cluster.nodes()}


def _empty_slot_key(backend: ClusterResultBackend, owner: int, tag: str) -> tuple[str, int]:
    """A task id whose result key's slot `owner` holds, with no key in that slot yet."""
    with redis.Redis(port=owner) as node:
        for n in range(10_000):
            task_id = f"{tag}-{n}"
            slot = backend.client.keyslot(backend.get_key_for_task(task_id))
            if backend.client.nodes_manager.get_node_from_slot(slot).port != owner:
                continue
            if node.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 0:
                return task_id, slot
    raise AssertionError("no empty slot found")


def test_stores_follow_a_moved_slot_and_an_ask_redirect(
    backend: ClusterResultBackend, cluster: RedisClusterNodes
) -> None:
    backend.store_result("warm", {"x": 1}, states.SUCCESS)  # the client has its slot map
    ids = _node_ids(cluster)
    source, target = cluster.master_ports()[:2]

    def setslot(slot: int, *args: str, ports: list[int] | None = None) -> None:
        for port in ports or cluster.master_ports():
            with redis.Redis(port=port) as node:
                node.execute_command("CLUSTER", "SETSLOT", slot, *args)

    # MOVED: a slot moves to another master behind the client's back.
    moved, slot = _empty_slot_key(backend, source, "moved")
    setslot(slot, "NODE", ids[target])
    wait_for(
        lambda: all(_owner(p, slot) == target for p in cluster.live_ports()),
        30,
        "every node to know the slot's new owner",
    )
    redirects = {"moved": 0, "asked": 0}
    store_on_node = backend._store_on_node

    def counted(
        node: Any, entries: Any, asking: bool = False, loaded: bool = False, codes: Any = None
    ) -> Any:
        count, redirected = store_on_node(node, entries, asking, loaded, codes)
        redirects["moved"] += len(redirected)
        redirects["asked"] += asking
        return count, redirected

    backend._store_on_node = counted  # type: ignore[method-assign]
    backend.store_result(moved, {"moved": True}, states.SUCCESS)
    assert redirects["moved"] == 1
    with redis.Redis(port=target) as node:
        assert json.loads(node.get(backend.get_key_for_task(moved)))["status"] == "SUCCESS"
    # ASK: a slot half-way through a migration sends a new key on to the importing master.
    asked, slot = _empty_slot_key(backend, source, "asked")
    setslot(slot, "IMPORTING", ids[source], ports=[target])
    setslot(slot, "MIGRATING", ids[target], ports=[source])
    backend.store_result(asked, {"asked": True}, states.SUCCESS)
    assert redirects == {"moved": 1, "asked": 1}
    setslot(slot, "NODE", ids[target])  # the migration ends (the slot held no other key)
    meta = json.loads(backend.client.get(backend.get_key_for_task(asked)))
    assert meta["status"] == "SUCCESS" and meta["result"] == {"asked": True}
    assert backend.unconfirmed == 0
    wait_for(cluster.healthy, 30, "the cluster to settle")


def _owner(port: int, slot: int) -> int:
    with redis.Redis(port=port) as node:
        for start, end, master, *_ in node.execute_command("CLUSTER", "SLOTS"):
            if start <= slot <= end:
                return int(master[1])
    return -1


def test_the_result_cache_works_on_a_cluster(cluster: RedisClusterNodes) -> None:
    settings = Settings.from_env({"RESULT_URL": cluster.url(), "REDIS_KEY_PREFIX": "c1:"})
    client = cache.connect(settings)
    assert client is not None and is_cluster_client(client)
    model = {"model": "resnet50", "weights": "random:0", "preprocess": "x", "precision": "fp32"}
    stored = []
    for n in range(24):
        data = f"image bytes {n}".encode()
        entry = cache.lookup(client, data, 1, model, settings)
        assert entry.stored is None and entry.key is not None  # a miss
        prediction = {"index": n, "label": f"class {n}", "probability": 0.5}
        entry.store({**model, "predictions": [prediction], "source": "a.jpg", "batch_size": 1})
        hit = cache.lookup(client, data, 1, model, settings)
        assert hit.stored is not None and hit.stored["predictions"] == [prediction]
        assert hit.reuse("b.jpg", 0.0, time.perf_counter())["cached"] is True
        stored.append(entry.key)
    assert all(n > 0 for n in by_master(cluster, stored).values()), "entries on every master"
    client.close()


def test_cancels_and_starts_agree_on_a_cluster(
    backend: ClusterResultBackend, cluster: RedisClusterNodes, broker: RedisServer
) -> None:
    """A job's cancel key and its result on different masters: the worker looks for the
    cancel once its STARTED write has answered (a second round trip), and every start and
    cancel still agree (worker/cancels.py), single jobs and a bulk message's images alike."""
    from types import SimpleNamespace

    from core.lifecycle import CANCEL_TAKEN, cancel_key
    from worker import cancels
    from worker.deliveries import record_start
    from worker.errors import Cancelled

    client, settings = backend.client, Settings.from_env({})
    ids = [f"cancel-{n}" for n in range(16)]  # 0-7 cancelled first, 8-15 started first

    def start(task_id: str) -> int:
        started = backend.started(task_id, "h")
        return record_start(client, task_id, 0, settings, False, started, cancels=True)

    with Client(broker.url(), result_url=cluster.url()) as producer:
        assert producer.cancel(ids[:8]).cancelled == ids[:8]
        for task_id in ids[:4]:
            with pytest.raises(Cancelled):
                start(task_id)
        assert all(start(task_id) == 1 for task_id in ids[8:12])
        images = [SimpleNamespace(id=i, deadline=None) for i in ids[4:8] + ids[12:]]
        task = SimpleNamespace(app=SimpleNamespace(backend=backend), request=SimpleNamespace())
        task.request.hostname = "h"
        assert set(cancels.start_images(task, images, "")) == set(ids[4:8])
        assert mget(client, [cancel_key(i) for i in ids[:8]]) == [CANCEL_TAKEN.encode()] * 8
        result = producer.cancel(ids)
        assert result.cancelled == ids[:8] and result.too_late == ids[8:]
        assert set(result.states.values()) == {"STARTED"}
        assert mget(client, [cancel_key(i) for i in ids[8:]]) == [None] * 8


def test_status_and_the_exporter_show_each_master_of_the_result_store(
    cluster: RedisClusterNodes, broker: RedisServer
) -> None:
    with Client(broker.url(), result_url=cluster.url()) as client:
        status = gather(client, ["celery"], timeout=0.2)
    store = status["result_store"]
    assert store["cluster"] is True and "error" not in store
    assert sorted(int(m["node"].rsplit(":", 1)[1]) for m in store["masters"]) == sorted(
        cluster.master_ports()
    )
    assert all(m["used_memory"] > 0 for m in store["masters"])
    text = render(status)
    assert f"results: Redis Cluster {cluster.url()}, 3 master(s)" in text
    # The broker's memory line no longer estimates results it does not hold.
    assert "result_bytes" not in (status["memory"] or {})
    collector = QueueCollector(redis.Redis.from_url(broker.url()), RedisConfig(), ["celery"], 15)
    collector.results = ResultStoreConfig.resolve(RedisConfig(), cluster.url())
    samples = {
        (sample.name, sample.labels.get("node")): sample.value
        for family in collector.collect()
        if family.name.startswith("imgqueue_result_store_")
        for sample in family.samples
    }
    nodes = {f"127.0.0.1:{p}" for p in cluster.master_ports()}
    assert {n for name, n in samples if name.endswith("used_memory_bytes")} == nodes
    assert {n for name, n in samples if name.endswith("max_memory_bytes")} == nodes


def shipped_users(path: Path) -> dict[str, list[str]]:
    """The `user` lines of a shipped config: name -> rules."""
    lines = [line.split() for line in path.read_text().splitlines() if line.startswith("user ")]
    return {fields[1]: fields[2:] for fields in lines}


def test_the_shipped_acl_users_work_on_every_cluster_node(
    cluster: RedisClusterNodes, broker: RedisServer
) -> None:
    users = shipped_users(ROOT / "deploy/redis-cluster.conf")
    # The same users as the broker's (plus the replicas' own): one set of passwords.
    assert {k: v for k, v in users.items() if k != "replica"} == shipped_users(
        ROOT / "deploy/redis.conf"
    )
    for port in cluster.live_ports():  # ACLs are per node: every node gets them
        with redis.Redis(port=port) as node:
            for name, rules in users.items():
                if name != "default":  # the tests' own connections use it
                    node.execute_command("ACL", "SETUSER", name, *rules)
    hosts = cluster.url().split("://", 1)[1]
    ids = [f"acl-{n}" for n in range(30)]
    app = Celery("acl", backend=f"{_BACKEND}+redis-cluster://worker:imgqueue-worker-dev@{hosts}")
    try:
        backend = app.backend
        backend.store_many([(i, {"predictions": []}, states.SUCCESS) for i in ids])
        assert backend.unconfirmed == 0  # WAIT is allowed, and answered
    finally:
        app.close()
    producer_url = f"redis-cluster://producer:imgqueue-producer-dev@{hosts}"
    with Client(broker.url(), result_url=producer_url) as client:
        assert {o.state for o in client._fetch(ids)} == {"SUCCESS"}
        key = result_key(ids[0])
        for command in (("SET", key, "{}"), ("DEL", key), ("EVAL", "return 1", 1, key)):
            with pytest.raises(redis.exceptions.NoPermissionError):
                client.results.execute_command(*command)


# -- the webhook outbox on a cluster ---------------------------------------------------------


def test_the_outbox_announces_what_a_dead_store_left_once(cluster: RedisClusterNodes) -> None:
    """The steps of a cluster's store, as a worker killed part way leaves them: the intents and
    the results written, then (for a group's job) the group counted, no event. The next run
    of one job announces it although its state is not new; a dispatcher's sweep announces the
    others and the group it completed; a late run after the sweep adds nothing. One event
    each, the outbox empty."""
    from celery import Celery

    prefix = f"outbox{os.getpid()}:"
    app = Celery("outbox", backend=f"worker.results_cluster:ClusterResultBackend+{cluster.url()}")
    app.conf.update(
        result_expires=600, result_backend_transport_options={"global_keyprefix": prefix}
    )
    backend = app.backend
    assert isinstance(backend, ClusterResultBackend)
    store = backend.client
    stream = prefix + EVENTS_STREAM
    box = outbox_key(stream)
    assert box is not None
    groups.create(store, "g1", ["c"], key_prefix=prefix, queue="celery", webhook="http://h/g")
    notes = [
        events.Note("a", queue="celery", webhook="http://h/a"),
        events.Note("b", queue="celery", webhook="http://h/b"),
        events.Note("c", queue="celery", group="g1"),
    ]
    values = [
        (backend.get_key_for_task(n.task_id), json.dumps({"status": "SUCCESS"}), "SUCCESS")
        for n in notes
    ]

    def announced() -> dict[str, int]:
        found: dict[str, int] = {}
        for _, f in store.xrange(stream):
            name = f"{f[b'kind'].decode()}:{f[b'id'].decode()}"
            found[name] = found.get(name, 0) + 1
        return found

    try:
        backend._intend(notes)  # 1. the intents
        backend._store_entries(values)  # 2. the results (and WAIT); killed before the events
        group = events.Events(prefix, 0).group_keys("g1")
        assert backend._account(keys=group, args=["g1", "1.0", 600, "c", "SUCCESS"])[0] == 1
        assert announced() == {} and store.hlen(box) == 4  # three jobs and the group
        backend._store_entries(values[:1], notes[:1])  # a's message comes back
        assert announced() == {"job:a": 1}
        assert Sweeper(store, prefix, 1000, after=0.001).sweep() == 3  # b, c and the group
        assert announced() == {"job:a": 1, "job:b": 1, "job:c": 1, "group:g1": 1}
        swept = {f[b"id"]: f for _, f in store.xrange(stream)}
        assert swept[b"b"][b"state"] == b"SUCCESS" and swept[b"b"][b"webhook"] == b"http://h/b"
        assert swept[b"g1"][b"kind"] == b"group" and swept[b"g1"][b"succeeded"] == b"1"
        backend._store_entries(values[1:2], notes[1:2])  # b's message comes back after all
        assert announced() == {"job:a": 1, "job:b": 1, "job:c": 1, "group:g1": 1}
        assert store.hlen(box) == 0
    finally:
        for key in (stream, box, *group, *(v[0] for v in values)):
            store.delete(key)
        app.close()
