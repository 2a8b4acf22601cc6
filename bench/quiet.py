"""Waiting for the CPUs to be idle before a measurement, on a machine shared with other work.

Another process that wants a core for even a few milliseconds stalls a two-thread parallel
section (an OpenMP team, an ONNX Runtime pool) until it is scheduled again: a shared 2-core VM
measured ResNet-50 at 2.6 img/s while one other process ran, 10 img/s alone. So where that is
possible the benchmarks time only after the CPUs were idle for a moment, and say how long they
waited.
"""

from __future__ import annotations

import time


def _cpu_times() -> tuple[int, int]:
    """(idle, total) jiffies since boot, all CPUs."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return idle, sum(fields[:8])


def idle_fraction(seconds: float = 0.5) -> float:
    """The share of CPU time spent idle over the next `seconds`."""
    try:
        idle1, total1 = _cpu_times()
        time.sleep(seconds)
        idle2, total2 = _cpu_times()
    except (OSError, ValueError, IndexError):
        return 1.0  # not Linux: cannot tell, do not wait
    return (idle2 - idle1) / max(1, total2 - total1)


def wait_quiet(max_wait: float, threshold: float = 0.9, window: float = 0.5) -> float:
    """Wait until the CPUs were at least `threshold` idle over two windows in a row, or
    `max_wait` seconds (0: do not wait). Returns the seconds waited."""
    started = time.monotonic()
    calm = 0
    while max_wait > 0 and time.monotonic() - started < max_wait:
        calm = calm + 1 if idle_fraction(window) >= threshold else 0
        if calm >= 2:
            break
    return time.monotonic() - started
