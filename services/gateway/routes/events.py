"""GET /v1/events: the caller's completion events, as Server-Sent Events.

    curl -N -H "Authorization: Bearer $KEY" http://127.0.0.1:8080/v1/events

One message per entry of the completion events stream (docs/lifecycle.md) whose tenant is the
caller's: a job that ended (`event: job`), or a group whose last job ended (`event: group`).
`id` is the stream entry's id, `data` the event as JSON (`producer.events.Event.to_dict()`;
never the webhook URL):

    id: 1718000000000-0
    event: job
    data: {"entry_id":"1718000000000-0","id":"…","kind":"job","state":"SUCCESS",…}

Where to start: `Last-Event-ID: <id>` (EventSource sends it when it reconnects) or `?since=`
(the header wins): an id to go on after it, `0` for every event the stream still holds
(EVENTS_MAXLEN), `$` (the default) for those from now on; now is when the answer's headers
are sent. A comment line every SSE_KEEPALIVE_S seconds without an event keeps proxies from
closing an idle stream. The stream is read by one task per gateway (services/gateway/event_hub.py):
a connected client costs no thread and no Redis connection of its own.
"""

from __future__ import annotations

import json
import logging
import re
from http import HTTPStatus
from typing import Annotated

import anyio
from fastapi import APIRouter, FastAPI, Header, Query, Request
from fastapi.responses import Response
from starlette.types import Receive, Scope, Send

from producer.events import Event
from services.gateway import problems
from services.gateway.auth import CurrentTenant
from services.gateway.event_hub import REDIS_ERRORS, EventHub, Subscription, Unavailable
from services.gateway.resources import Res, Resources

log = logging.getLogger("imgqueue.gateway")

router = APIRouter(tags=["events"])

MEDIA_TYPE = "text/event-stream"
KINDS = ("job", "group")
RECONNECT_MS = 2000  # what EventSource waits before it reconnects
START = re.compile(r"^(\$|0|[0-9]{1,20}(-[0-9]{1,20})?)$")
# Given as content, not as `model`: FastAPI would list the problem under text/event-stream too.
ERRORS = {
    status: {
        "description": HTTPStatus(status).phrase,
        "content": {
            problems.MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/ProblemDetails"}}
        },
    }
    for status in (401, 422, 503)
}


def message(event: Event) -> bytes:
    data = event.to_dict()
    data.pop("webhook", None)  # a tenant's receiver URL may carry a secret: never streamed
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return f"id: {event.entry_id}\nevent: {event.kind}\ndata: {text}\n\n".encode()


class EventStream(Response):
    """The SSE answer: subscribes before its headers go (so `$` is resolved by then), ends
    when the client disconnects, and unsubscribes whatever ends it."""

    media_type = MEDIA_TYPE

    def __init__(self, hub: EventHub, tenant: str, since: str, keepalive_s: float) -> None:
        # No Response.__init__: its empty body would set Content-Length: 0.
        self.status_code, self.background = 200, None
        self.init_headers({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.hub, self.tenant, self.since, self.keepalive_s = hub, tenant, since, keepalive_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with self.hub.subscribe(self.tenant, self.since) as subscription:
                await send(
                    {"type": "http.response.start", "status": 200, "headers": self.raw_headers}
                )
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(self._until_disconnect, receive, tasks.cancel_scope)
                    await self._stream(subscription, send)
                    tasks.cancel_scope.cancel()
        except Unavailable:
            retry = {"Retry-After": str(problems.RETRY_UNAVAILABLE_S)}
            problem = problems.Problem(503, "the events stream cannot be read now", headers=retry)
            await problems.response(problem)(scope, receive, send)

    @staticmethod
    async def _until_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        scope.cancel()

    async def _stream(self, subscription: Subscription, send: Send) -> None:
        async def body(data: bytes, more: bool = True) -> None:
            await send({"type": "http.response.body", "body": data, "more_body": more})

        await body(f"retry: {RECONNECT_MS}\n\n".encode())
        try:
            async for batch in subscription.batches(self.keepalive_s):
                chunk = b"".join(message(e) for e in batch if e.kind in KINDS)
                await body(chunk or b": keep-alive\n\n")
        except REDIS_ERRORS as exc:
            # The client reconnects with Last-Event-ID and goes on where this stopped.
            log.warning("an events stream ended: Redis failed (%s)", exc)
        await body(b"", more=False)


def hub_of(app: FastAPI, resources: Resources) -> EventHub:
    hub: EventHub | None = getattr(app.state, "event_hub", None)
    if hub is None:
        hub = app.state.event_hub = EventHub(resources.client)
    return hub


@router.get(
    "/v1/events",
    response_class=EventStream,
    status_code=200,  # EventStream's __init__ has none for FastAPI to read it from
    responses={
        200: {
            "description": "Server-Sent Events: `id` the stream entry id, `event` job or "
            "group, `data` the event as JSON",
            "content": {MEDIA_TYPE: {"schema": {"type": "string"}}},
        },
        **ERRORS,  # type: ignore[dict-item]
    },
    summary="Follow your jobs' and groups' completion events (Server-Sent Events)",
)
async def events(
    request: Request,
    tenant: CurrentTenant,
    resources: Res,
    since: Annotated[
        str,
        Query(
            max_length=45,
            description="`$` (from now on), `0` (all the stream holds) or an event id to go "
            "on after; Last-Event-ID wins over it",
        ),
    ] = "$",
    last_event_id: Annotated[
        str | None,
        Header(alias="Last-Event-ID", max_length=45, description="the last event id received"),
    ] = None,
) -> Response:
    start, field = (last_event_id, "Last-Event-ID") if last_event_id else (since, "since")
    if not START.match(start):
        why = "expected $, 0 or an event id (<ms>-<seq>)"
        raise problems.Problem(
            422, f"{field}: {why}", errors=[problems.FieldError(field=field, message=why)]
        )
    hub = hub_of(request.app, resources)
    return EventStream(hub, tenant.name, start, resources.settings.sse_keepalive_s)
