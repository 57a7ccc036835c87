"""The finish step: Matryoshka cut, re-normalization and quantization, against sentence-transformers."""

from __future__ import annotations

import numpy as np
import pytest
from sentence_transformers.util.quantization import quantize_embeddings

from embedstream import vectors


@pytest.mark.parametrize("output_type", ["int8", "uint8", "binary", "ubinary"])
@pytest.mark.parametrize("value_range", [1.0, 0.3])
def test_quantization_equals_quantize_embeddings_with_fixed_ranges(output_type: str, value_range: float) -> None:
    data = np.random.default_rng(3).normal(0, 0.2, (50, 20)).astype(np.float32)
    data[0, :4] = [-5, 5, value_range, -value_range]  # clipped at both ends, and the exact edges
    ranges = np.array([[-value_range] * 20, [value_range] * 20], dtype=np.float32)
    want = quantize_embeddings(data, output_type, ranges=ranges if "int8" in output_type else None)
    got = vectors.quantize(data, output_type, value_range)
    assert got.dtype == want.dtype and np.array_equal(got, want)
    assert vectors.unpack(got.tobytes(), output_type, 20).shape == want.shape
    assert vectors.row_bytes(output_type, 20) == want.shape[1]


def test_truncate_renormalizes_only_when_asked() -> None:
    data = np.random.default_rng(4).normal(size=(3, 16)).astype(np.float32)
    cut = vectors.truncate(data, 8, True)
    assert cut.shape == (3, 8) and np.allclose(np.linalg.norm(cut, axis=1), 1)
    assert np.array_equal(vectors.truncate(data, 8, False), data[:, :8])
    assert vectors.truncate(data, 0, True) is data
    half = vectors.finish(data, 8, True, "float16", 1.0)
    assert np.array_equal(np.frombuffer(half, "<f2").reshape(3, 8), cut.astype(np.float16))
