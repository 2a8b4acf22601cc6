"""`python -m cli.summary < results.jsonl`: a readable table of the CLI's JSON lines."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable
from typing import Any


def rows(lines: Iterable[str]) -> list[str]:
    out = []
    for line in lines:
        if not line.strip():
            continue
        item: dict[str, Any] = json.loads(line)
        if item.get("state") != "SUCCESS":
            error = item.get("error") or {}
            out.append(f"{item['id'][:8]}  FAILED  {error.get('type')}: {error.get('message')}")
            continue
        result = item["result"]
        name = os.path.basename(result["source"])
        top = ", ".join(f"{p['label']} {p['probability']:.1%}" for p in result["predictions"][:3])
        note = "  [RANDOM WEIGHTS: meaningless]" if result.get("pretrained") is False else ""
        out.append(f"{name:<16} {top}  ({result['weights']}, {result['device']}){note}")
    return out


def main() -> int:
    for row in rows(sys.stdin):
        print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
