"""The worker's thread policy: all cores while the machine is quiet, one fewer while others are busy."""

from __future__ import annotations

from embedstream.workers.threads import ThreadPolicy, busy_seconds


class Machine:
    """A fake clock and CPU counters: ``advance`` moves time, others' CPU and ours."""

    def __init__(self) -> None:
        self.now = 100.0
        self.busy = 1000.0
        self.own = 5.0

    def advance(self, seconds: float, others_cores: float, own_cores: float = 0.0) -> None:
        self.now += seconds
        self.own += seconds * own_cores
        self.busy += seconds * (others_cores + own_cores)


def policy(machine: Machine, fixed: int = 0, ceiling: int = 4) -> tuple[ThreadPolicy, list[int]]:
    applied: list[int] = []
    made = ThreadPolicy(fixed, applied.append, ceiling, lambda: machine.busy, lambda: machine.now, lambda: machine.own)
    return made, applied


def test_a_quiet_machine_gets_every_core_and_a_busy_one_one_fewer() -> None:
    machine = Machine()
    threads, applied = policy(machine)
    machine.advance(1.0, others_cores=0.0, own_cores=3.9)  # our own passes do not count as others
    assert threads.apply() == 4
    machine.advance(1.0, others_cores=0.6, own_cores=3.0)
    assert threads.apply() == 3
    machine.advance(1.0, others_cores=0.15)  # between the thresholds: the last choice stands
    assert threads.apply() == 3
    machine.advance(1.0, others_cores=0.0)
    assert threads.apply() == 4
    assert applied == [4, 3, 4], "torch is told only when the count changes"
    assert threads.yielded == 2


def test_the_choice_stands_within_a_window() -> None:
    machine = Machine()
    threads, _ = policy(machine)
    machine.advance(0.05, others_cores=2.0)  # too short a window to judge
    assert threads.apply() == 4
    machine.advance(0.5, others_cores=2.0)
    assert threads.apply() == 3


def test_a_fixed_count_or_one_core_turns_the_policy_off() -> None:
    machine = Machine()
    fixed, applied = policy(machine, fixed=2)
    machine.advance(1.0, others_cores=3.0)
    assert fixed.apply() == 2 and not fixed.adaptive and applied == [2]
    single, _ = policy(machine, ceiling=1)
    machine.advance(1.0, others_cores=3.0)
    assert single.apply() == 1 and not single.adaptive


def test_busy_seconds_reads_this_machines_counters() -> None:
    first = busy_seconds()
    assert first is not None and first >= 0
    assert busy_seconds(set()) == 0
