"""`python -m services.webhooks`: POSTs each finished job's result to its webhook, signed.

The dispatcher follows the completion events (core.keys.EVENTS_STREAM, on the result store)
with the consumer group WEBHOOK_CONSUMER_GROUP, so workers never wait for a receiver: a job's
result and the next batch never depend on it. Any number of dispatchers may run; each reads as
`<host>:<pid>`.

An event with a webhook becomes a delivery in the retry set (WEBHOOK_RETRIES, a sorted set
scored by when each is due; its first attempt is due at once), and its stream entry is
acknowledged. A dispatcher leases due deliveries (their score moves past the lease, so a
dispatcher that dies mid-attempt only delays them), up to twice WEBHOOK_CONCURRENCY at once,
and POSTs them from a pool of WEBHOOK_CONCURRENCY threads over kept-alive connections. Its
loop does the Redis work in batches and is woken as soon as half the leased work is done
(about 1,800 deliveries/s to a receiver that answers at once, measured by
`python -m bench.webhooks`: docs/performance.md):

- the body is the job's result as `imgqueue result` prints it (read from the result store at
  the first attempt and kept, byte for byte, for every retry), or a group's summary;
- headers `webhook-id` (the same for every attempt of one delivery), `webhook-timestamp` and
  `webhook-signature` (`v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">`, one per
  WEBHOOK_SECRET key), as Standard Webhooks specifies. An event with a `tenant` is signed with
  that tenant's own `webhook_secret` instead (core.tenants, read at most every TENANT_TTL
  seconds); one whose tenant no longer exists is dead-lettered (`tenant`), never signed with
  another secret;
- 2xx: delivered. Anything else, a connection error or no answer within WEBHOOK_TIMEOUT: tried
  again after WEBHOOK_RETRY_BACKOFF seconds, doubling (plus up to 10%), at most an hour, until
  WEBHOOK_MAX_ATTEMPTS; then dead-lettered (WEBHOOK_DEAD_LETTERS, newest first, capped at
  DEAD_LETTER_LIMIT; `imgqueue status` shows them) with one log line.
- the URL obeys the fetch policy the workers' fetches obey (core/vetted_http.py: public
  addresses only unless FETCH_ALLOW_NETWORKS, resolved once and connected to exactly the
  vetted address, TLS checked for the host name). A refused one is dead-lettered at once,
  never connected to. Redirects are not followed: a 3xx is a failed attempt.

Entries a dead dispatcher read but never moved are claimed after CLAIM_IDLE_MS (XAUTOCLAIM).
On a Redis Cluster result store the dispatcher also sweeps the events' outbox (core/outbox.py):
the events of results whose worker died before announcing them are appended, so their webhooks
are not lost. SIGTERM stops reading and leasing, lets the attempts in flight end (at most
WEBHOOK_TIMEOUT), gives back those leased but not started (due at once), and exits 0. With
METRICS_PORT set: /metrics (the backlog and its age among them) and /healthz (see
docs/lifecycle.md). Settings: WebhookSettings (settings.py). Celery, torch and the `worker`
package are never imported.

Modules, by concern: main (the process), settings, dispatcher (the loop), events (the consumer
group), retries (the retry set and dead letters), deliveries (a delivery and its fate), attempts
(one attempt), payloads (the body), signing (the signature), sender (the POSTs), sweeper (the
outbox), metrics.
"""
