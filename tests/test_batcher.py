"""The batch policy: token budget, sorted by length, oldest input always included."""

from __future__ import annotations

import numpy as np
import pytest

from embedstream.wire import Job
from embedstream.workers.batcher import Batcher, Entry, complete
from embedstream.workers.model import Tokens


def entry(lengths: list[int], name: str = "e") -> Entry:
    toks = [Tokens([0] * n, n, False, f"{name}{i}") for i, n in enumerate(lengths)]
    return Entry(name.encode(), Job(name, "r", 10**15, 0, [t.text for t in toks]), "q", b"", toks, True)


def test_batches_respect_token_budget_and_size() -> None:
    b = Batcher(max_batch_tokens=100, max_batch_size=4)
    b.add(entry([10, 50, 12, 11, 9, 30, 13]))
    seen = 0
    while len(b):
        batch = b.take()
        width = max(it.length for it in batch)
        assert len(batch) <= 4 and len(batch) * width <= 100
        seen += len(batch)
    assert seen == 7


def test_batches_group_similar_lengths() -> None:
    b = Batcher(max_batch_tokens=10_000, max_batch_size=3)
    b.add(entry([5, 100, 6, 101, 7, 102]))
    first, second = b.take(), b.take()
    assert sorted(it.length for it in first) == [5, 6, 7]
    assert sorted(it.length for it in second) == [100, 101, 102]


def test_oldest_input_is_never_starved() -> None:
    b = Batcher(max_batch_tokens=10_000, max_batch_size=2)
    b.add(entry([200], "old"))
    for k in range(5):
        b.add(entry([3, 3], f"new{k}"))
    assert any(it.entry.job.id == "old" for it in b.take())


def test_an_input_over_budget_still_runs_alone() -> None:
    b = Batcher(max_batch_tokens=10, max_batch_size=8)
    b.add(entry([50, 2]))
    sizes = sorted(len(b.take()) for _ in range(2))
    assert sizes == [1, 1]


def test_complete_fills_vectors_and_reports_finished_entries() -> None:
    b = Batcher(max_batch_tokens=1000, max_batch_size=2)
    e1, e2 = entry([3, 4, 5], "a"), entry([3], "b")
    b.add(e1)
    b.add(e2)
    done = []
    while len(b):
        batch = b.take()
        vecs = np.array([[it.index, len(it.entry.job.id)] for it in batch], dtype=np.float32)
        done += complete(batch, vecs, 1.0)
    assert set(done) == {e1, e2}
    assert [row[0] for row in e1.results] == [0, 1, 2]


def test_complete_checks_the_vector_count() -> None:
    b = Batcher(max_batch_tokens=1000, max_batch_size=4)
    b.add(entry([3, 3]))
    with pytest.raises(RuntimeError, match="2"):
        complete(b.take(), np.zeros((1, 2), dtype=np.float32), 1.0)


def test_cpu_padding_bound_splits_mixed_lengths_and_accelerators_merge_them() -> None:
    lengths = [10, 12, 11, 250, 9]
    cpu = Batcher(max_batch_tokens=100_000, max_batch_size=32)
    cpu.add(entry(lengths))
    assert sorted(it.length for it in cpu.take()) == [9, 10, 11, 12]
    assert [it.length for it in cpu.take()] == [250]
    gpu = Batcher(max_batch_tokens=100_000, max_batch_size=32, padding_factor=0.0)
    gpu.add(entry(lengths))
    assert len(gpu.take()) == 5


def test_large_pool_drains_in_arrival_fair_order() -> None:
    b = Batcher(max_batch_tokens=4096, max_batch_size=64)
    lengths = [(i * 7919) % 200 + 3 for i in range(20_000)]
    b.add(entry(lengths, "big"))
    taken = 0
    first_batch = b.take()
    assert any(it.index == 0 for it in first_batch)
    taken += len(first_batch)
    while len(b):
        taken += len(b.take())
    assert taken == 20_000
