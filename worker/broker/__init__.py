"""The delivery layer: a kombu transport of our own for Celery workers on Redis.

Select it with Celery's `broker_transport` (`transport_for(url)` picks the class); nothing in
kombu is replaced process-wide. docs/reliability.md describes what it guarantees.
"""

from worker.broker.compat import BrokerIncompatible
from worker.broker.transport import Channel, SentinelChannel, SentinelTransport, Transport

__all__ = [
    "BrokerIncompatible",
    "Channel",
    "SentinelChannel",
    "SentinelTransport",
    "Transport",
    "transport_for",
]


def transport_for(url: str) -> str:
    """The `broker_transport` value for a REDIS_URL."""
    if url.startswith("sentinel://"):
        return "worker.broker:SentinelTransport"
    return "worker.broker:Transport"
