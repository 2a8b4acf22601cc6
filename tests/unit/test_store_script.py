"""STORE's arguments (worker/store_script.py), built in one place, and EVENTS_MAXLEN read only
through its declaration. The script itself runs against a real Redis in
tests/integration/test_events.py and test_backend_atomic.py."""

from __future__ import annotations

import pytest
from celery import Celery

from core.settings import SettingError
from worker import store_script
from worker.events import Events, Note, maxlen_of


def test_a_bulks_images_share_one_origin_and_pass_five_values_each() -> None:
    events = Events("p:", 1000)
    notes: list[Note | None] = [
        Note("a", queue="q", group="g"),
        Note("b", error="Boom", queue="q", group="g"),
        None,  # the message's own summary: no event
    ]
    values = [("k:a", "va", "SUCCESS"), ("k:b", "vb", "FAILURE"), ("k:m", "vm", "SUCCESS")]
    keys, args = store_script.arguments(
        values, notes, events, publish=True, failure_ttl=7, other_ttl=9, group_ttl=11
    )
    assert keys == ["k:a", "k:b", "k:m", events.stream, *events.group_keys("g")]
    assert args[:3] == [1, 7, 9]
    assert args[3:5] == [3, 1000]  # result keys, MAXLEN
    assert args[6:9] == [11, 0, 1]  # groups' TTL, no report, one origin
    assert args[9:15] == [1, "q", "g", 1, "", ""]  # label, queue, group, its index, webhook, tenant
    assert args[15:] == [
        *("SUCCESS", "va", "a", "", 1),
        *("FAILURE", "vb", "b", "Boom", 1),
        *("SUCCESS", "vm", "", "", 0),
    ]


def test_a_clusters_call_announces_nothing_and_reports() -> None:
    keys, args = store_script.arguments(
        [("k:a", "va", "SUCCESS")],
        [Note("a", queue="q")],
        Events("", 5),
        publish=False,
        failure_ttl=0,
        other_ttl=0,
        group_ttl=0,
        announce=False,
    )
    assert keys == ["k:a"]
    assert args[:5] == [0, 0, 0, 1, 0]  # no publish, kept, one key, no MAXLEN
    assert args[7:9] == [1, 0]  # report, no origin
    assert args[9:] == ["SUCCESS", "va", "a", "", 0]


def test_events_maxlen_of_a_plain_app_is_parsed_by_its_declaration(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = Celery("plain")
    monkeypatch.delenv("EVENTS_MAXLEN", raising=False)
    assert maxlen_of(app) == 100_000
    monkeypatch.setenv("EVENTS_MAXLEN", "7")
    assert maxlen_of(app) == 7
    monkeypatch.setenv("EVENTS_MAXLEN", "lots")  # was silently the default
    with pytest.raises(SettingError, match="EVENTS_MAXLEN='lots'"):
        maxlen_of(app)
    monkeypatch.setenv("EVENTS_MAXLEN", "-1")
    with pytest.raises(SettingError, match="must not be negative"):
        maxlen_of(app)
