"""The benchmark corpus: deterministic mixed-length English-like texts."""

from __future__ import annotations

import random

_WORDS = (
    "the of and to in is was for on that with as by at from his her it an were are which this be or "
    "has had not but their its one all also first new more after who other two been they time when "
    "system model vector search query document index cluster latency memory service request worker "
    "river mountain forest ocean city village market garden library museum music theatre painting "
    "government university company research history science language network energy water climate "
    "quickly slowly carefully brightly ancient modern large small green blue red yellow northern"
).split()


def mixed_texts(n: int, seed: int = 7) -> list[str]:
    """``n`` texts: 60% short (4-20 words), 30% medium (20-80), 10% long (80-250)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        roll = rng.random()
        words = rng.randint(4, 20) if roll < 0.6 else rng.randint(20, 80) if roll < 0.9 else rng.randint(80, 250)
        body = " ".join(rng.choice(_WORDS) for _ in range(words))
        out.append(f"{body[0].upper()}{body[1:]}, item {i}.")
    return out


def goal_texts(n: int, seed: int = 5) -> list[str]:
    """``n`` texts of 8 to 64 words, uniformly: the corpus the goals of issue 14 are measured on."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        body = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(8, 64)))
        out.append(f"{body[0].upper()}{body[1:]}, item {i}.")
    return out
