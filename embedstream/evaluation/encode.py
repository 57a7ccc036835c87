"""Embedding a dataset through the running service for one candidate, timing every request.

Requests go through the public client's generated stub (``Client.stub``) because the
evaluation needs what ``Client.embed`` leaves out: output types, sparse vectors and
multi-vector rows, decoded here from the raw response.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from embedstream import vectors
from embedstream.evaluation.scoring import as_float
from embedstream.v1 import embedder_pb2 as pb
from embedstream.v1 import embedder_pb2_grpc as pb_grpc

#: The output types ``--output-type`` names, as in the API.
OUTPUT_TYPES = {name: pb.OutputType.Value(f"OUTPUT_TYPE_{name.upper()}") for name in vectors.OUTPUT_TYPES}
#: How each model family is searched (see scoring.py).
KINDS = {
    pb.MODEL_FAMILY_TEXT_DENSE: "dense",
    pb.MODEL_FAMILY_IMAGE_TEXT: "dense",
    pb.MODEL_FAMILY_DEBUG: "dense",
    pb.MODEL_FAMILY_SPARSE: "sparse",
    pb.MODEL_FAMILY_MULTI_VECTOR: "multi",
}


@dataclass(frozen=True)
class Candidate:
    """One configuration to evaluate: a served model (canonical name), a size and an output type."""

    model: str
    kind: str
    dimensions: int  # what the vectors have; the model's full size when not cut
    cut: bool  # whether requests ask for ``dimensions`` (Matryoshka)
    output_type: str = "float32"

    @property
    def name(self) -> str:
        """A label such as ``all-MiniLM-L6-v2`` or ``nomic@256 int8``."""
        label = f"{self.model}@{self.dimensions}" if self.cut else self.model
        return label if self.output_type == "float32" else f"{label} {self.output_type}"


@dataclass
class Timing:
    """Per-request latencies (ms) and the wall time of a phase (s)."""

    latencies_ms: list[float]
    wall_s: float
    texts: int


def request(candidate: Candidate, texts: Sequence[str], input_type: pb.InputType.ValueType) -> pb.EmbedRequest:
    """The EmbedRequest for ``texts`` as queries or documents of ``candidate``."""
    req = pb.EmbedRequest(
        model=candidate.model,
        inputs=[pb.Input(text=t) for t in texts],
        input_type=input_type,
        output_type=OUTPUT_TYPES[candidate.output_type],
        encoding=pb.VECTOR_ENCODING_PACKED,
    )
    if candidate.cut:
        req.dimensions = candidate.dimensions
    return req


def decode(resp: pb.EmbedResponse, candidate: Candidate) -> list[Any]:
    """One item per input: a float32 vector (dense), a (rows, dims) array (multi) or (ids, weights) (sparse)."""
    if candidate.kind == "sparse":
        return [
            (np.array(e.sparse.indices, dtype=np.int64), np.array(e.sparse.values, dtype=np.float32))
            for e in resp.embeddings
        ]
    rows = [as_float(e.packed, candidate.output_type, resp.dimensions) for e in resp.embeddings]
    return rows if candidate.kind == "multi" else [r[0] for r in rows]


def embed(
    stub: pb_grpc.EmbedderStub,
    candidate: Candidate,
    texts: Sequence[str],
    query: bool,
    batch_size: int,
    concurrency: int,
    timeout: float,
    advance: Callable[[int], None],
) -> tuple[Any, Timing]:
    """Embed ``texts`` in requests of ``batch_size`` with ``concurrency`` in flight; items in input order."""
    input_type = pb.INPUT_TYPE_QUERY if query else pb.INPUT_TYPE_DOCUMENT
    chunks = [texts[i : i + batch_size] for i in range(0, len(texts), batch_size)]

    def call(chunk: Sequence[str]) -> tuple[list[Any], float]:
        started = time.perf_counter()
        resp = stub.Embed(request(candidate, chunk, input_type), timeout=timeout)
        return decode(resp, candidate), (time.perf_counter() - started) * 1000

    items: list[Any] = []
    latencies = []
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        for got, ms in pool.map(call, chunks):
            items.extend(got)
            latencies.append(ms)
            advance(len(got))
    timing = Timing(latencies, time.perf_counter() - started, len(texts))
    if candidate.kind == "dense":
        return (np.stack(items) if items else np.zeros((0, candidate.dimensions), np.float32)), timing
    return items, timing
