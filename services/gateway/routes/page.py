"""The web page at `/`: services/gateway/page/ (index.html, app.js, style.css), served as they are.

No build step and nothing from elsewhere: the page talks to this gateway's public API only
(POST /v1/jobs, GET /v1/jobs/{id}, GET /v1/events, GET /v1/queues/{name}), with the API key
the user types. Only the files named here are served, with a Content-Security-Policy that
allows scripts, styles and requests from this origin alone (images from anywhere: the page
shows the URLs it submits).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from services.gateway import problems

router = APIRouter(include_in_schema=False)

PAGE = Path(__file__).resolve().parent.parent / "page"
ASSETS = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; img-src 'self' blob: data: http: https:; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # the images' servers need not learn the gateway's URL
    "Cache-Control": "no-cache",  # revalidated: a new release's page is seen at once
}


@router.api_route("/", methods=["GET", "HEAD"])  # HEAD: uptime checks
async def index() -> FileResponse:
    return FileResponse(PAGE / "index.html", media_type="text/html; charset=utf-8", headers=HEADERS)


@router.get("/page/{name}")
async def asset(name: str) -> FileResponse:
    media_type = ASSETS.get(name)
    if media_type is None:
        raise problems.not_found("file", name)
    return FileResponse(PAGE / name, media_type=media_type, headers=HEADERS)
