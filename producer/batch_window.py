"""How many jobs `imgqueue batch` keeps in flight (queued, running, or ended and not read yet).

`--in-flight N`, or by default about QUEUED_SECONDS of the workers' speed, as measured on the
batch's own completions each second: enough queued that every worker stays busy while the
batch itself waits for a CPU, little enough that Redis holds seconds of work, not the batch.
"""

from __future__ import annotations

import time

# The window's cap: a queued image costs Redis ~100 bytes, a stored result ~1 KB, and only
# the results of one poll wait for their rows: well under 256 MB.
MAX_IN_FLIGHT = 65_536
# Without --in-flight the window holds about this many seconds of the workers' work, as
# measured on this batch's own completions (asking the workers would cost a broadcast and
# tell their speed on other work), and at least MIN_MESSAGES bulk messages: every worker
# reserves a message per task thread (16 on CPU), and a smaller queue leaves some idle.
QUEUED_SECONDS = 10.0
MIN_MESSAGES = 64
_ADAPT_S = 1.0


class Window:
    """How many jobs may be in flight: --in-flight, or QUEUED_SECONDS of the measured rate."""

    def __init__(self, fixed: int | None, bulk_size: int) -> None:
        self.fixed, self.bulk_size = fixed, bulk_size
        self.floor = min(MAX_IN_FLIGHT, MIN_MESSAGES * bulk_size)
        self.size = fixed or self.floor
        self._since, self._ended = time.monotonic(), 0

    def ended(self, count: int) -> None:
        self._ended += count
        elapsed = time.monotonic() - self._since
        if self.fixed or elapsed < _ADAPT_S:
            return
        wanted = int(self._ended / elapsed * QUEUED_SECONDS)
        # Grow at once; shrink by half a step at most (a pause is not a slower fleet).
        self.size = min(MAX_IN_FLIGHT, max(self.floor, wanted, self.size // 2))
        self._since, self._ended = time.monotonic(), 0
