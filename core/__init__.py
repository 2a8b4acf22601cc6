"""The shared core: what the producer, the worker and the services all use.

The job contract and its error types (contract, errors, job_errors), the Redis key layout
(keys, lifecycle), connections and the settings machinery (connections, settings), result
states, redaction, tenants and model routing, the URL policy and vetted HTTP connections
(urls, addresses, vetted_http), the events' outbox (outbox) and the metrics endpoint
(endpoint). No Celery worker, no torch: every process
imports it.
"""
