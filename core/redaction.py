"""Showing URLs without their secrets, by parsing them rather than by pattern.

A source URL may carry credentials (`https://user:pass@host/...`) or a signature in its query
(presigned S3 and GCS URLs). Wherever a source is shown (logs, error messages, results, task
argument reprs), it is shown as `display_url` makes it: scheme, host, port and path; no
userinfo, the query as `REDACTED`, no fragment. Secrets may hold any character (quotes, `@`,
`%`, non-ASCII), so the URL is split by its structure, never by a character class.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

MAX_SHOWN = 300
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_WHITESPACE = re.compile(r"\s")


def display_url(url: str, limit: int | None = MAX_SHOWN) -> str:
    """The URL with no userinfo, its query as REDACTED and no fragment; cut to `limit`
    characters (None: never)."""
    scheme_end = url.find("://")
    if scheme_end < 0:
        return _cut(url, limit)  # a path, not a URL
    rest = url[scheme_end + 3 :]
    # The authority ends at the first "/", "?" or "#"; userinfo is what precedes its last "@"
    # (a password may itself contain "@" only percent-encoded, but be safe with raw ones too).
    end = len(rest)
    for stop in "/?#":
        i = rest.find(stop)
        if i >= 0:
            end = min(end, i)
    authority, tail = rest[:end], rest[end:]
    if "@" in authority:
        authority = authority.rsplit("@", 1)[1]
    elif "@" in tail:
        # A raw "/", "?" or "#" inside a password ("u:p?x@host") ends the authority early;
        # parsers disagree on such URLs, so show no part of them.
        return _cut(f"{url[:scheme_end]}://<redacted>", limit)
    path = tail.split("#", 1)[0]
    query = ""
    if "?" in path:
        path, query = path.split("?", 1)
    try:
        parts = urlsplit(f"{url[:scheme_end]}://{authority}{path}")
        shown = urlunsplit(parts._replace(query="REDACTED" if query else "", fragment=""))
    except ValueError:
        shown = f"{url[:scheme_end]}://<unparseable URL>"
    return _cut(shown, limit)


def redact_text(text: str) -> str:
    """Every URL in free text (a log line quoting a repr) shown as `display_url` would.

    A URL is taken to run to the next whitespace, quotes included, so a secret holding a quote
    cannot end it early.
    """
    if "://" not in text:
        return text
    out, pos = [], 0
    for match in _SCHEME.finditer(text):
        if match.start() < pos:
            continue
        space = _WHITESPACE.search(text, match.end())
        end = space.start() if space else len(text)
        token = text[match.start() : end]
        # Keep the quote or bracket that closed a repr outside the URL where it is plain.
        trailer = re.search(r"[\"'\])},>]+$", token)
        close = trailer.group(0) if trailer and "@" not in trailer.group(0) else ""
        url = token[: len(token) - len(close)] if close else token
        out.append(text[pos : match.start()])
        out.append(display_url(url, limit=None) + close)
        pos = end
    out.append(text[pos:])
    return "".join(out)


def redact_error(exc: BaseException, limit: int = 200) -> str:
    """An exception for a log line: its message (else its type's name) as `redact_text` shows
    it, cut after `limit` characters."""
    text = redact_text(str(exc) or type(exc).__name__)
    return text if len(text) <= limit else text[:limit] + "..."


def _cut(text: str, limit: int | None) -> str:
    return text if limit is None or len(text) <= limit else text[: limit - 3] + "..."
