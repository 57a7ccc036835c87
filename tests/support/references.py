"""Reference libraries' models for the conformance suite, loaded once per folder."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any


@cache
def sentence_transformer(folder: Path) -> Any:
    """``SentenceTransformer(folder)`` on the CPU, once per folder."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(folder), device="cpu")
