"""The shared core: what the producer, the worker and the services all use.

The job contract and its error types (contract, errors), the Redis key layout (keys,
lifecycle), connections and the settings machinery (connections, settings), result
states, redaction, tenants and model routing. No Celery worker, no torch: every process
imports it.
"""
