"""`imgqueue status` (a process) shows Redis' memory and how many hours of results it has room
for: against a private redis-server with a maxmemory (no worker needed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import redis

from tests.support.paths import ROOT
from tests.support.redis_memory import (
    MAXMEMORY,
    r_fixture,  # noqa: F401  (the fixture `r`)
    server_fixture,  # noqa: F401  (the fixture `server`)
    store_results,
)
from tests.support.redis_server import RedisServer


def test_status_shows_memory(server: RedisServer, r: redis.Redis) -> None:
    store_results(r, 30)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "REDIS_URL": server.url()}
    run = [sys.executable, "-m", "producer", "status", "--timeout", "0.2"]
    out = subprocess.run(
        [*run, "--json"], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    mem = json.loads(out.stdout)["memory"]
    assert mem["maxmemory"] == MAXMEMORY and mem["maxmemory_policy"] == "noeviction"
    assert 0 < mem["used_memory"] < MAXMEMORY
    assert mem["result_bytes_measured"] >= 1 and 600 < mem["result_bytes"] < 2000
    assert mem["results_per_hour"] == 0 and mem["hours_left"] is None  # no worker answered
    human = subprocess.run(run, env=env, capture_output=True, text=True, timeout=60, check=True)
    assert "redis memory: " in human.stdout and "of maxmemory 64.00 MiB" in human.stdout
    assert "no estimate of the room left" in human.stdout
