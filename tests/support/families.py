"""The family suite's models and registry: tiny randomly initialised models saved by their own
libraries (tests/support/tinymodels.py) and served through the service's loaders."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embedstream.v1 import embedder_pb2 as pb
from tests.support.processes import Proc

PROMPTS = {"query": "query: ", "document": "passage: ", "classify": "classify this: "}
TEXTS = ["a photo of a cat", "Redis streams hold the queue.", "embedding models turn text into vectors, fast!"]


@dataclass
class Families:
    port: int
    models: dict[str, Path]
    workers: dict[str, Proc]
    gateway: Proc


def registry(models: dict[str, Path]) -> str:
    prompts = ", ".join(f'{k} = "{v}"' for k, v in PROMPTS.items())
    return f"""
default = "tiny-st"

[models.tiny-st]
family = "text-dense"
path = "{models["st"]}"
prompts = {{ {prompts} }}
matryoshka_dimensions = [16, 8]
version = "tiny-1"

[models.clip]
family = "image-text"
path = "{models["open_clip"]}"
aliases = ["open-clip"]

[models.hf-clip]
family = "image-text"
path = "{models["hf_clip"]}"

[models.siglip]
family = "image-text"
path = "{models["siglip"]}"
backend = "transformers"

[models.splade]
family = "sparse"
path = "{models["splade"]}"
max_batch_tokens = 1024

[models.colbert]
family = "multi-vector"
path = "{models["colbert"]}"

[models.rerank]
family = "rerank"
path = "{models["rerank"]}"
"""


MODELS = ["tiny-st", "clip", "hf-clip", "siglip", "splade", "colbert", "rerank"]


def texts(items: list[str]) -> list[pb.Input]:
    return [pb.Input(text=t) for t in items]


def values(resp: pb.EmbedResponse) -> np.ndarray:
    return np.array([list(e.values) for e in resp.embeddings], dtype=np.float32)
