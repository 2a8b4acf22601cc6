"""What machine a benchmark ran on, to name beside its absolute figures."""

from __future__ import annotations


def cpu_name() -> str:
    """What /proc/cpuinfo calls this CPU."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"
