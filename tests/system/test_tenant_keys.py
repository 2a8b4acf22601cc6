"""`imgqueue keys` as a user runs it (a process) and in this process: create, list and revoke API
keys, stored hashed; a real redis-server, no worker."""

from __future__ import annotations

import json

import pytest
import redis

from core.tenants import (
    Tenant,
    get_tenant,
)
from tests.support.cli import imgqueue, run_cli
from tests.support.tenants import (
    CONFIG,
    r_fixture,  # noqa: F401  (the fixture `r`)
    url_fixture,  # noqa: F401  (the fixture `url`)
)


def test_keys_create_list_and_revoke_through_the_cli(
    url: str, r: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    # As a user runs it: the key is the last line of output, what it says about it comes first.
    made = imgqueue(url, "keys", "create", "--tenant", "acme", "--queues", "celery,bulk")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip().splitlines()[-1]
    assert key.startswith("iq_") and len(key) > 40
    assert "acme" in made.stderr and key not in made.stderr
    code, out, err = run_cli(
        capsys, url, "keys", "create", "--tenant", "acme", "--models", "(default),defects",
        "--max-queued", "7",
    )  # fmt: skip
    assert code == 0, err
    second = out.strip().splitlines()[-1]
    # Options given replace the tenant's, those left out keep theirs.
    assert get_tenant(r, CONFIG, "acme") == Tenant(
        "acme",
        queues=("celery", "bulk"),
        models=("", "defects"),
        max_queued=7,
        webhook_secret=get_tenant(r, CONFIG, "acme").webhook_secret,  # type: ignore[union-attr]
        created=get_tenant(r, CONFIG, "acme").created,  # type: ignore[union-attr]
    )
    # Stored hashed: neither key is anywhere in Redis.
    for k in r.keys("*"):
        dump = json.dumps({str(f): str(v) for f, v in r.hgetall(k).items()})
        assert key not in dump and second not in dump
    code, out, err = run_cli(capsys, url, "keys", "list")
    assert code == 0 and out.count("acme") == 2
    assert key[:13] in out and key not in out and second not in out
    code, out, _ = run_cli(capsys, url, "keys", "list", "--json")
    listed = json.loads(out)
    assert {k["key"] for k in listed} == {key[:13], second[:13]}
    assert all(k["tenant"] == "acme" and k["created"] > 0 for k in listed)
    # Revoked by the first characters `list` shows (as it shows them), then by the whole key.
    code, out, _ = run_cli(capsys, url, "keys", "revoke", key[:13] + "...")
    assert code == 0 and key[:13] in out
    code, out, _ = run_cli(capsys, url, "keys", "revoke", second)
    assert code == 0
    assert json.loads(run_cli(capsys, url, "keys", "list", "--json")[1]) == []
    # Nothing matches, or too little given to match safely: usage errors.
    code, _, err = run_cli(capsys, url, "keys", "revoke", second)
    assert code == 2 and "no API key matches" in err
    code, _, err = run_cli(capsys, url, "keys", "revoke", "iq_ab")
    assert code == 2
    code, _, err = run_cli(capsys, url, "keys", "create", "--tenant", "no spaces")
    assert code == 2 and "tenant name" in err
    code, _, err = run_cli(capsys, url, "keys", "create", "--tenant", "a", "--max-queued", "-1")
    assert code == 2
