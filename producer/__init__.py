"""Producer side of imgqueue: enqueue images for classification and read the results.

    from producer import Client
    with Client("redis://localhost:6379/0") as client:
        task_id = client.submit("https://example.com/cat.jpg")
        print(client.result(task_id, timeout=30)["predictions"][0])

Importing this package never imports torch or the worker.
"""

from typing import Any

from core.contract import ERROR_TYPES, TASK_NAME
from core.errors import (
    BrokerUnavailable,
    ConfigError,
    Forbidden,
    InvalidSource,
    JobFailed,
    ObjectAccessDenied,
    ObjectNotFound,
    ObjectStoreError,
    ProducerError,
    QueueFull,
    RedisFull,
    ResultTimeout,
    TenantQuotaExceeded,
    UnknownModel,
    UploadTooLarge,
)
from core.webhooks import InvalidWebhook

__all__ = [
    "ERROR_TYPES",
    "TASK_NAME",
    "BrokerUnavailable",
    "Client",
    "ConfigError",
    "Forbidden",
    "InvalidSource",
    "InvalidWebhook",
    "JobFailed",
    "ObjectAccessDenied",
    "ObjectNotFound",
    "ObjectStoreError",
    "Outcome",
    "ProducerError",
    "QueueFull",
    "RedisFull",
    "ResultTimeout",
    "TenantQuotaExceeded",
    "UnknownModel",
    "UploadTooLarge",
]


def __getattr__(name: str) -> Any:
    # The Client pulls in Celery; modules that only need the contract or the connection
    # settings (a health check, a decode process) import this package without it.
    if name in ("Client", "Outcome"):
        from producer import client

        return getattr(client, name)
    raise AttributeError(f"module 'producer' has no attribute {name!r}")
