"""`imgqueue render results.jsonl -o sheet.png`: a contact sheet of images and their top labels.

Reads the JSON lines `imgqueue submit --wait` prints; draws each input image with its top
predictions and probabilities, failed jobs as a tile naming the error. Results from random or
stand-in weights get a red banner and red tiles: their labels mean nothing. Needs the `render`
extra (matplotlib, pillow): `pip install 'imgqueue[render]'`.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import requests

_MAX_DOWNLOAD = 20 * 1024 * 1024
_WARN = "#c62828"
BANNER = "RANDOM / STAND-IN WEIGHTS: these labels are MEANINGLESS (demo or test run)"


def read_lines(lines: Iterable[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in lines if line.strip()]


def meaningless(result: dict[str, Any]) -> bool:
    """Random weights or the stand-in model: the result itself says so."""
    return result.get("pretrained") is False or "warning" in result


def load_image(source: str, image_root: Path | None) -> Any | None:
    """The image a result came from, or None when it cannot be had here."""
    from PIL import Image

    try:
        if "://" in source:
            resp = requests.get(source, timeout=10, stream=True)
            resp.raise_for_status()
            data = resp.raw.read(_MAX_DOWNLOAD + 1, decode_content=True)
            if len(data) > _MAX_DOWNLOAD:
                return None
            image = Image.open(io.BytesIO(data))
        else:
            path = Path(source)
            if not path.is_absolute() and image_root is not None:
                path = image_root / path
            image = Image.open(path)
        image.thumbnail((512, 512))
        return image.convert("RGB")
    except (OSError, ValueError, requests.RequestException):
        return None


def caption(item: dict[str, Any], top: int) -> tuple[str, str, bool]:
    """(title, lines of predictions, whether to mark it red)."""
    result = item.get("result")
    if item.get("state") != "SUCCESS" or not isinstance(result, dict):
        error = item.get("error") or {}
        return item.get("id", "?")[:8], f"FAILED: {error.get('type', item.get('state'))}", True
    lines = [
        f"{p['label'][:28]}  {p['probability']:.1%}" for p in result.get("predictions", [])[:top]
    ]
    flags = [result.get("weights", "?")]
    if result.get("cached"):
        flags.append("cached")
    if meaningless(result):
        flags.append("MEANINGLESS")
    lines.append(f"[{', '.join(flags)}]")
    return (
        os.path.basename(str(result.get("source", "?")))[:32],
        "\n".join(lines),
        meaningless(result),
    )


def render(
    items: list[dict[str, Any]],
    out: Path,
    *,
    image_root: Path | None = None,
    columns: int = 4,
    top: int = 3,
) -> Path:
    from matplotlib.figure import Figure
    from PIL import Image

    columns = max(1, min(columns, len(items)))
    rows = max(1, math.ceil(len(items) / columns))
    fig = Figure(figsize=(3.2 * columns, 4.2 * rows + 0.6), dpi=100)
    warn = any(meaningless(i.get("result") or {}) for i in items)
    if warn:
        fig.suptitle(BANNER, color="white", backgroundcolor=_WARN, fontsize=12, weight="bold")
    for n, item in enumerate(items):
        ax = fig.add_subplot(rows, columns, n + 1)
        title, text, red = caption(item, top)
        result = item.get("result") or {}
        image = load_image(str(result["source"]), image_root) if "source" in result else None
        if image is None:
            # A 4:3 blank, so a failed job's tile lines up with the photos around it.
            image = Image.new("RGB", (400, 300), (236, 236, 236))
            ax.text(200, 150, "no image", ha="center", va="center", color="grey")
        ax.imshow(image)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(text, fontsize=8, color=_WARN if red else "black", loc="left")
        if red:
            for spine in ax.spines.values():
                spine.set_edgecolor(_WARN)
                spine.set_linewidth(3)
    fig.tight_layout(rect=(0, 0, 1, 0.95 if warn else 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out


def add_subparser(sub: Any) -> None:
    p = sub.add_parser("render", help="draw a contact sheet (PNG) from results JSON lines")
    p.add_argument("results", help="JSON lines from `imgqueue submit --wait`, or - for stdin")
    p.add_argument("-o", "--output", type=Path, default=Path("sheet.png"), help="the PNG to write")
    p.add_argument("--image-root", type=Path, default=None, help="where relative sources live")
    p.add_argument("--columns", type=int, default=4, help="images per row")
    p.add_argument("--top", type=int, default=3, help="predictions per image")
    p.set_defaults(offline=cmd_render)


def cmd_render(ns: argparse.Namespace) -> int:
    try:
        import matplotlib  # noqa: F401
        import PIL  # noqa: F401
    except ImportError:
        print("error: render needs matplotlib: pip install 'imgqueue[render]'", file=sys.stderr)
        return 2
    if ns.results == "-":
        items = read_lines(sys.stdin)
    else:
        with open(ns.results) as f:
            items = read_lines(f)
    if not items:
        print("error: no results to draw", file=sys.stderr)
        return 2
    render(items, ns.output, image_root=ns.image_root, columns=ns.columns, top=ns.top)
    print(f"wrote {ns.output} ({len(items)} images)", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cli.render", description=__doc__)
    add_subparser(parser.add_subparsers(dest="command", required=True))
    ns = parser.parse_args(["render", *(sys.argv[1:] if argv is None else argv)])
    code: int = ns.offline(ns)
    return code


if __name__ == "__main__":
    sys.exit(main())
