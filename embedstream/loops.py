"""Background loops that outlive any failing iteration: each failure is counted and logged, rate-limited.

A loop that reads or writes Redis (a heartbeat, lease renewal, reclaiming, the reply reader, the
directory) must not end on one refusal: Redis full, a command denied, a connection killed. It
records the failure here and carries on after its backoff.
"""

from __future__ import annotations

import logging
import time

from embedstream import metrics
from embedstream.errors import clip

log = logging.getLogger(__name__)

#: At most one log line per loop this often; the failures between are counted in it.
LOG_EVERY_S = 10.0


class Mishaps:
    """The failures of one named loop: ``failed`` after each, ``recovered`` after a success."""

    def __init__(self, loop: str, every_s: float = LOG_EVERY_S) -> None:
        self.loop = loop
        self.every_s = every_s
        self._logged = -float("inf")
        self._quiet = 0
        self._failing = False
        self._counter = metrics.LOOP_ERRORS.labels(loop)

    def failed(self, exc: BaseException) -> None:
        """Count one failed iteration; log it unless this loop logged one within ``every_s``."""
        self._counter.inc()
        now = time.monotonic()
        if now - self._logged < self.every_s:
            self._quiet += 1
            return
        more = f" (and {self._quiet} more since the last report)" if self._quiet else ""
        log.warning("%s failed: %s: %s%s; carrying on", self.loop, type(exc).__name__, clip(exc, 200), more)
        self._logged, self._quiet = now, 0
        self._failing = True  # only a failure that was logged is followed by "works again"

    def recovered(self) -> None:
        """An iteration went through: say so once after failures."""
        if self._failing:
            self._failing = False
            log.info("%s works again", self.loop)
