"""The result cache (worker/cache.py): what its key covers, turning it off, reusing an entry
for another source, and refusing a forged entry."""

from __future__ import annotations

import json

import redis

from worker import cache
from worker.settings import Settings


def test_a_forged_cache_entry_is_ignored(redis_url: str) -> None:
    settings = Settings(redis_url=redis_url, model="resnet50")
    model = {"model": "resnet50", "weights": "w", "preprocess": "p", "precision": "fp32"}
    key = cache.cache_key(b"forged", 2, model, settings)
    r = redis.Redis.from_url(redis_url)
    client = settings.redis_config.client()
    good = {**model, "predictions": [{"index": 1, "label": "a", "probability": 0.5}] * 2}
    try:
        for forged in (
            {**good, "weights": "someone else's"},
            {**good, "predictions": [{"index": 1, "label": "a", "probability": 7}] * 2},
            {**good, "predictions": "<script>"},
            ["not", "a", "result"],
        ):
            r.set(key, json.dumps(forged))
            assert cache.lookup(client, b"forged", 2, model, settings).stored is None
        r.set(key, json.dumps(good))
        assert cache.lookup(client, b"forged", 2, model, settings).stored == good
    finally:
        r.delete(key)
        r.close()
        client.close()
