"""Sources outside the contract (core.contract.source_problem), each with the words the refusal
names: what submit refuses before sending anything, and workers refuse alike."""

from __future__ import annotations

from core.contract import MAX_SOURCE_CHARS

BAD_SOURCES = [
    ("", "non-empty"),
    ("   ", "non-empty"),
    ("x" * (MAX_SOURCE_CHARS + 1), f"longer than {MAX_SOURCE_CHARS}"),
    ("cat\x00.jpg", "U+0000"),
    ("http://example.com/a\r\nHost: evil/", "U+000D"),
    ("dir\tname/cat.jpg", "U+0009"),
    ("cat\x1b[31m.jpg", "U+001B"),
    ("cat\x7f.jpg", "U+007F"),
]
