"""The last step of every embedding: Matryoshka cut, re-normalization, quantization, bytes.

Output types follow Cohere's embed API names. The quantization is
sentence-transformers' ``quantize_embeddings`` with fixed, per-model ranges
instead of ranges calibrated per call, so the same input always gives the same
bytes:

* ``int8``/``uint8``: ``q = clip(floor((x + r) / (2r / 255)), 0, 255)``, minus
  128 for int8; ``r`` is the model's ``quantization_range`` (1.0 by default,
  which covers every component of a normalized vector).
* ``binary``/``ubinary``: one bit per dimension (``x > 0``), packed eight per
  byte with the first dimension in the high bit; binary stores each byte minus
  128 as int8.

Both sides use :func:`row_bytes` to find where one vector ends in a reply.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: What a model can return (EmbedRequest.outputs, the registry's ``outputs``).
OUTPUTS = ("dense", "sparse", "multi-vector")
OUTPUT_TYPES = ("float32", "float16", "int8", "uint8", "binary", "ubinary")
#: numpy dtype of each output type's stored values.
DTYPES: dict[str, np.dtype[Any]] = {
    "float32": np.dtype("<f4"),
    "float16": np.dtype("<f2"),
    "int8": np.dtype("i1"),
    "uint8": np.dtype("u1"),
    "binary": np.dtype("i1"),
    "ubinary": np.dtype("u1"),
}


def row_bytes(output_type: str, dimensions: int) -> int:
    """Bytes one vector of ``dimensions`` takes in ``output_type``."""
    if output_type.endswith("binary"):
        return (dimensions + 7) // 8
    return dimensions * DTYPES[output_type].itemsize


def truncate(vectors: np.ndarray, dimensions: int, normalize: bool) -> np.ndarray:
    """Keep the first ``dimensions`` components (Matryoshka); re-normalize when asked."""
    if not dimensions or dimensions >= vectors.shape[-1]:
        return vectors
    cut = vectors[..., :dimensions]
    if normalize:
        norms = np.linalg.norm(cut, axis=-1, keepdims=True)
        cut = cut / np.maximum(norms, 1e-12)
    return np.ascontiguousarray(cut, dtype=np.float32)


def quantize(vectors: np.ndarray, output_type: str, value_range: float = 1.0) -> np.ndarray:
    """``vectors`` (float32, last axis = dimensions) in ``output_type``'s dtype."""
    if output_type == "float32":
        return vectors.astype("<f4", copy=False)
    if output_type == "float16":
        return vectors.astype("<f2")
    if output_type in ("int8", "uint8"):
        start = np.float32(-value_range)
        step = (np.float32(value_range) - start) / np.float32(255)
        q: np.ndarray = np.clip(np.floor((vectors.astype(np.float32, copy=False) - start) / step), 0, 255)
        return (q - 128).astype(np.int8) if output_type == "int8" else q.astype(np.uint8)
    if output_type in ("binary", "ubinary"):
        bits: np.ndarray = np.packbits(vectors > 0, axis=-1)
        return (bits - 128).astype(np.int8) if output_type == "binary" else bits
    raise ValueError(f"unknown output type {output_type!r}")


def finish(vectors: np.ndarray, dimensions: int, normalize: bool, output_type: str, value_range: float) -> bytes:
    """Cut, re-normalize and quantize ``vectors``; their bytes, row after row."""
    data: bytes = quantize(truncate(vectors, dimensions, normalize), output_type, value_range).tobytes()
    return data


def unpack(data: bytes, output_type: str, dimensions: int) -> np.ndarray:
    """Rows of ``data`` as an array: floats for float types, ints otherwise (bytes for binary types)."""
    width = row_bytes(output_type, dimensions)
    values: np.ndarray = np.frombuffer(data, dtype=DTYPES[output_type])
    per_row = width // DTYPES[output_type].itemsize
    return values.reshape(-1, per_row) if per_row else values.reshape(0, 0)
