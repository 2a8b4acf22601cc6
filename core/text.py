"""Redis replies as text: redis-py answers bytes, or str where a client decodes responses."""

from __future__ import annotations


def text(value: bytes | str) -> str:
    """`value` as str. Bytes are UTF-8, as this service writes them; bytes another writer left
    that are not become U+FFFD rather than an exception in the middle of a read."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
