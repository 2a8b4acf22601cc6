"""Rows as `imgqueue batch` writes them, for one batch id."""

from __future__ import annotations

from typing import Any

from producer.batch_rows import row_line

BATCH = "b" * 32


def row(index: int, state: str = "SUCCESS", source: str = "") -> bytes:
    rest: dict[str, Any] = {"result": {"predictions": []}}
    if state != "SUCCESS":
        rest = {"error": {"type": "SourceNotFound", "message": "gone"}}
    return row_line(f"{BATCH}-{index}", state, source or f"s{index}.png", rest)
