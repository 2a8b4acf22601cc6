"""Real parts for the tests, one module per concern.

paths (ROOT, SAMPLES), ports (free_port), waiting (wait_for), cli (imgqueue, run_cli), messages
(held and queued broker messages), redis_server (RedisServer, SentinelCluster, fake_old_redis),
redis_cluster (RedisClusterNodes), workers (WorkerProcess, WorkerFactory), http_server (a
misbehaving HTTP server on loopback), corpus (crafted image files, parser floods), images (small
hostile and unusual image files).

Shared by a unit and a system test module of the same name: webhooks (a receiver, the
dispatcher process), models (checkpoints and labels files), sources (a hostile IMAGE_ROOT and
its HTTP server), delivery (the delivery layer's own redis-server). Their fixtures are declared
under their own names with `name=`; a module imports `<name>_fixture` to use one.
"""
