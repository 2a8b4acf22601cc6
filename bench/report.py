"""The printed table, the ratios against the issue's targets, and the batch-size plot."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Report:
    rows: list[dict[str, Any]] = field(default_factory=list)
    ratios: list[tuple[str, float, str]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def add(self, what: str, precision: str, size: str, ips: float | None, **extra: Any) -> None:
        self.rows.append(
            {"what": what, "precision": precision, "size": size, "img_s": ips, **extra}
        )
        print(f"  {what:<34} {precision:<5} {size:<10} {_fmt(ips)} img/s {_extra(extra)}")

    def ratio(self, name: str, value: float, target: str) -> None:
        self.ratios.append((name, value, target))

    def render(self) -> str:
        lines = [
            f"| {'measurement':<34} | prec  | size      |   img/s | p50 ms | p99 ms |",
            f"|{'-' * 36}|-------|-----------|---------|--------|--------|",
        ]
        for r in self.rows:
            lines.append(
                f"| {r['what']:<34} | {r['precision']:<5} | {r['size']:<9} | "
                f"{_fmt(r['img_s']):>7} | {_fmt(r.get('p50_ms')):>6} | {_fmt(r.get('p99_ms')):>6} |"
            )
        lines += ["", "| ratio | value | target |", "|---|---|---|"]
        lines += [f"| {n} | {v:.2f} | {t} |" for n, v, t in self.ratios]
        return "\n".join(lines)

    def save(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        data = {"info": self.info, "rows": self.rows, "ratios": self.ratios}
        (out / "bench.json").write_text(json.dumps(data, indent=2))
        (out / "bench.md").write_text(self.render() + "\n")


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if value < 1000 else f"{value:.0f}"


def _extra(extra: dict[str, Any]) -> str:
    return " ".join(f"{k}={_fmt(v) if isinstance(v, float) else v}" for k, v in extra.items())


def plot(sweep: dict[int, float], service: dict[int, float], precision: str, path: Path) -> bool:
    """Throughput and latency against batch size, as a PNG; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    sizes = sorted(sweep)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(sizes, [s / sweep[s] for s in sizes], "o-", label="model only (in-process)")
    if service:
        ss = sorted(service)
        ax1.plot(ss, [service[s] for s in ss], "s-", label="service, end to end")
    ax1.set(xlabel="batch size", ylabel="images/s", title=f"Throughput ({precision})")
    ax1.set_xscale("log", base=2)
    ax1.legend()
    ax2.plot(sizes, [sweep[s] * 1000 for s in sizes], "o-", color="tab:red")
    ax2.set(xlabel="batch size", ylabel="ms per batch", title="Batch latency (model only)")
    ax2.set_xscale("log", base=2)
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
