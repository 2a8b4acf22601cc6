"""`python -m services.webhooks`'s process: settings, logging, signals, /metrics and /healthz."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import time
from collections.abc import Sequence
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.exposition import generate_latest

import services.webhooks
from core.endpoint import Endpoint
from core.settings import SettingError, load
from services.webhooks.dispatcher import Dispatcher
from services.webhooks.settings import WebhookSettings

log = logging.getLogger("imgqueue.webhooks")

STALL_AFTER = 60.0  # /healthz answers 503 when the loop has not turned for this long


def consumer_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.webhooks",
        description=services.webhooks.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.parse_args(argv)
    try:
        settings = load(WebhookSettings)
    except SettingError as exc:
        print(f"error: {exc}", flush=True)
        return 2
    logging.basicConfig(
        level=settings.log_level or "INFO", format="%(asctime)s %(levelname)s %(message)s"
    )
    store = settings.result_config.client(socket_connect_timeout=5, socket_timeout=10)
    try:
        dispatcher = Dispatcher(settings, store, consumer_name())
    except SettingError as exc:
        log.error("%s", exc)
        return 2
    endpoint = None
    if settings.metrics_port:
        endpoint = Endpoint(settings.metrics_addr, settings.metrics_port, routes(dispatcher))
        endpoint.start()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: dispatcher.stop.set())
    log.info(
        "webhook dispatcher %s following %s on %s (%d at once, %g s per attempt, %d attempts)",
        dispatcher.consumer,
        dispatcher.stream,
        settings.result_config.safe_url(),
        settings.webhook_concurrency,
        settings.webhook_timeout,
        settings.webhook_max_attempts,
    )
    try:
        dispatcher.run()
    finally:
        if endpoint is not None:
            endpoint.stop()
        store.close()
    log.info("webhook dispatcher stopped")
    return 0


def routes(dispatcher: Dispatcher) -> dict[str, Any]:
    """The endpoint's routes (METRICS_PORT): /metrics, and /healthz (503 once stalled)."""

    def healthz() -> tuple[int, bytes, str]:
        stalled = time.monotonic() - dispatcher.last_turn > STALL_AFTER
        return (503, b"stalled\n", "text/plain") if stalled else (200, b"ok\n", "text/plain")

    def metrics() -> tuple[int, bytes, str]:
        return 200, generate_latest(dispatcher.metrics.registry), CONTENT_TYPE_LATEST

    return {"/metrics": metrics, "/healthz": healthz}
