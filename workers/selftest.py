"""The self-test every model passes at load, before its worker takes work.

A fixed probe is encoded alone and again inside a padded batch beside a longer
input. The output must be finite, of the declared shape, unit length where the
model normalizes, and the same (to float tolerance) both ways: a vector must
never depend on its batch-mates. Wrong pooling for the padding side, a broken
attention mask or a head with garbage weights fail here, and the worker refuses
the model (exit 2, the reason recorded) instead of serving it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from embedstream.errors import ConfigError
from embedstream.registry import ModelSpec
from embedstream.workers.model import Model, Source

PROBE = "embedstream self-test probe: the quick brown fox jumps over the lazy dog."
LONGER = "A longer companion input that pads the probe inside its batch, " * 4
#: Tolerance per dtype (absolute, on unit-scale outputs).
TOLERANCE = {"float32": 1e-4, "float16": 2e-2, "bfloat16": 5e-2}


def check(spec: ModelSpec, model: Model) -> None:
    """Raise ConfigError naming the model where the probe fails."""
    if spec.family == "debug":
        return
    try:
        problem = _problem(spec, model)
    except ConfigError:
        raise
    except Exception as exc:
        problem = f"encoding the probe raised {type(exc).__name__}: {exc}"
    if problem:
        raise ConfigError(f"model {spec.name}: self-test failed: {problem}")


def _problem(spec: ModelSpec, model: Model) -> str:
    sources: list[Source] = [PROBE, LONGER]
    if model.output == "score":
        sources = [("what does the probe say?", PROBE), ("what does the probe say?", LONGER)]
    probe, longer = model.tokenize(sources)
    if probe.error or longer.error:
        return f"the probe could not be prepared: {probe.error or longer.error}"
    widths: dict[str, int] = getattr(model, "output_dimensions", {})
    alone = _rows(model.output, model.forward([probe], [True]), model.dimensions, widths)
    # The batcher sorts by length, longest first: the probe is padded.
    batched = _rows(model.output, model.forward([longer, probe], [True, True]), model.dimensions, widths)
    if len(alone) != 1 or len(batched) != 2:
        return f"{len(alone)} and {len(batched)} outputs for batches of 1 and 2"
    got, again = alone[0], batched[1]
    if not np.isfinite(got).all() or not np.isfinite(again).all():
        return "the output holds NaN or Inf"
    if model.output == "dense" and got.shape != (model.dimensions,):
        return f"a vector of shape {got.shape}, not the declared ({model.dimensions},)"
    if model.output == "multi" and (got.ndim != 2 or got.shape[1] != model.dimensions):
        return f"token vectors of shape {got.shape}, not (tokens, {model.dimensions})"
    if model.normalizes and model.output in ("dense", "multi"):
        norms = np.linalg.norm(got.reshape(-1, got.shape[-1]), axis=-1)
        if not np.allclose(norms, 1.0, atol=1e-3):
            return f"the model normalizes, but the probe's norm is {float(norms.min()):.6f}"
    tol = TOLERANCE.get(spec.dtype, 1e-4)
    if got.shape != again.shape:
        return f"the probe gives shape {got.shape} alone and {again.shape} in a padded batch"
    diff = float(np.abs(got - again).max()) if got.size else 0.0
    if diff > tol * max(1.0, float(np.abs(got).max())):
        return f"the probe differs by {diff:.2e} alone and in a padded batch (pooling or padding is wrong)"
    return ""


def _rows(kind: str, outputs: Any, dimensions: int, widths: dict[str, int]) -> list[np.ndarray]:
    """Each input's output as one array (sparse: dense over the vocabulary; several outputs: all, flattened)."""
    if kind == "outputs":  # BGE-M3: each output by its own kind and width
        kinds = {"dense": "dense", "sparse": "sparse", "multi-vector": "multi"}
        return [
            np.concatenate([_rows(kinds[n], [row[n]], widths[n], {})[0].ravel() for n in sorted(row)])
            for row in outputs
        ]
    if kind == "sparse":
        rows = []
        for idx, weights in outputs:
            dense = np.zeros(dimensions, dtype=np.float32)
            dense[idx] = weights
            rows.append(dense)
        return rows
    return [np.asarray(row, dtype=np.float32) for row in outputs]
