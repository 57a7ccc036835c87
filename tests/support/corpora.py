"""Deterministic test corpora: distinct texts of mixed lengths from a fixed vocabulary."""

from __future__ import annotations

import random

WORDS = (
    "vector queue stream worker gateway batch token model redis embed search index query document "
    "cluster shard replica latency throughput memory window credit deadline cancel retry signal "
    "alpha beta gamma delta river mountain forest ocean city village market garden library museum "
    "quickly slowly carefully quietly brightly green blue red yellow small large ancient modern"
).split()

#: Input text that must never reach a log.
SENTINEL = "zebra-sentinel-7f3a: private words"


def texts(n: int, seed: int = 0, min_words: int = 3, max_words: int = 12) -> list[str]:
    """``n`` distinct texts (a serial number makes each unique)."""
    rng = random.Random(seed)
    return [f"{i} " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(min_words, max_words))) for i in range(n)]
