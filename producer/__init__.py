"""Producer side of imgqueue: enqueue images for classification and read the results.

    from producer import Client
    with Client("redis://localhost:6379/0") as client:
        task_id = client.submit("https://example.com/cat.jpg")
        print(client.result(task_id, timeout=30)["predictions"][0])

Importing this package never imports torch or the worker.
"""

from producer.client import Client, Outcome
from producer.contract import ERROR_TYPES, TASK_NAME
from producer.errors import BrokerUnavailable, JobFailed, ProducerError, ResultTimeout

__all__ = [
    "ERROR_TYPES",
    "TASK_NAME",
    "BrokerUnavailable",
    "Client",
    "JobFailed",
    "Outcome",
    "ProducerError",
    "ResultTimeout",
]
