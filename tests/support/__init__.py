"""Real parts for the tests, one module per concern.

paths (ROOT, SAMPLES), ports (free_port), waiting (wait_for), cli (imgqueue), messages (held and
queued broker messages), redis_server (RedisServer, SentinelCluster, fake_old_redis),
redis_cluster (RedisClusterNodes), workers (WorkerProcess, WorkerFactory), http_server (a
misbehaving HTTP server on loopback), corpus (crafted image files).
"""
