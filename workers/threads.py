"""How many torch threads each forward pass gets: every core while the machine is quiet, one fewer while it is not.

A forward pass on CPU is a chain of OpenMP parallel regions, each ending in a
barrier. When torch runs as many threads as there are cores and another
process (the gateway, Redis, a neighbour) wants one of them, a torch thread is
descheduled and every barrier waits a scheduler slice for it: measured on the
2-core VM, MiniLM fell from 127 to 24 texts/s and one text from 20 ms to ~550 ms.
One thread fewer avoids that cliff but leaves a core idle on a quiet machine.

So with ``EMBEDSTREAM_THREADS=0`` (the default) the model thread looks, before
each forward pass, at how much CPU the *other* processes on the worker's cores
used since it last looked (``/proc/stat`` over the cores in its affinity mask,
minus its own process's CPU time): a quarter of a core or more and the pass
runs on all cores but one; under a tenth of a core it runs on all of them; in
between the last choice stands. A fixed ``EMBEDSTREAM_THREADS=N`` turns the
policy off. The worker also starts OpenMP with ``OMP_WAIT_POLICY=PASSIVE``
(:func:`prepare_environment`): threads that finish a region early sleep rather
than spin, so a spinning torch thread never takes the core the gateway needs.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

#: Other processes' CPU (in cores) above which a pass leaves one core free, and below which it takes all.
BUSY_CORES = 0.25
QUIET_CORES = 0.10
#: The shortest interval the CPU use is averaged over; between looks the last choice stands.
WINDOW_S = 0.2


def cores() -> int:
    """The cores this process may run on (its affinity mask, which a cpuset container narrows)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def prepare_environment() -> None:
    """Settings OpenMP reads once, when torch is first imported: call before that."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def set_torch_threads(threads: int) -> None:
    """torch's intra-op thread count for the calling thread; nothing for models without torch."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)


def busy_seconds(cpus: set[int] | None = None) -> float | None:
    """CPU seconds spent busy on ``cpus`` (all when None) since boot; None where /proc/stat is missing."""
    try:
        with open("/proc/stat") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for line in lines:
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or name == "cpu":
            continue
        if cpus is not None and int(name[3:]) not in cpus:
            continue
        fields = [int(v) for v in rest.split()]
        # user nice system idle iowait irq softirq steal: idle and iowait are not busy.
        total += sum(fields[:8]) - fields[3] - fields[4]
    return total / ticks


class ThreadPolicy:
    """Chooses the thread count of the next forward pass; ``apply`` runs on the model thread."""

    def __init__(
        self,
        fixed: int,
        set_threads: Callable[[int], None],
        ceiling: int | None = None,
        sample: Callable[[], float | None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        own: Callable[[], float] = time.process_time,
    ) -> None:
        self.ceiling = fixed or ceiling or cores()
        self.adaptive = not fixed and self.ceiling > 1
        self._set = set_threads
        try:
            mask: set[int] | None = set(os.sched_getaffinity(0))
        except AttributeError:
            mask = None
        self._sample = sample or (lambda: busy_seconds(mask))
        self._clock = clock
        self._own = own
        self._last = (clock(), self._sample(), own())
        self.current = self.ceiling
        self._applied = 0
        #: How many passes ran with one core left free.
        self.yielded = 0

    def choose(self) -> int:
        """The thread count for the next pass (see the module docstring)."""
        if not self.adaptive:
            return self.ceiling
        now, busy, own = self._clock(), self._sample(), self._own()
        then, busy_then, own_then = self._last
        if busy is None or busy_then is None:
            return self.ceiling
        if now - then >= WINDOW_S:
            others = max(0.0, (busy - busy_then) - (own - own_then)) / (now - then)
            if others >= BUSY_CORES:
                self.current = self.ceiling - 1
            elif others < QUIET_CORES:
                self.current = self.ceiling
            self._last = (now, busy, own)
        return self.current

    def apply(self) -> int:
        """Set torch's thread count for the pass about to run on this thread; returns it."""
        threads = self.choose()
        if threads != self._applied:  # the model thread keeps its own OpenMP setting
            self._set(threads)
            self._applied = threads
        if threads < self.ceiling:
            self.yielded += 1
        return threads
