"""The in-process ("raw") model every benchmark ratio divides by: sentence-transformers on all cores,
its throughput over a corpus, its single-text times, and those beside the service's own calls; and the
worker's own model code (its engine: ONNX Runtime or torch) in-process, which the service's overhead
is told against."""

from __future__ import annotations

import gc
import time
from typing import Any

from embedstream.workers.threads import cores
from loadtest.measure import unary_times


def raw_model(path: str, device: str = "cpu", dtype: str = "float32") -> Any:
    """sentence-transformers' model in this process on all cores (the "raw" of every ratio)."""
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(cores())
    model = SentenceTransformer(path, device=device)
    if dtype != "float32":
        model = model.to(getattr(torch, dtype))
    return model


def raw_rate(model: Any, texts: list[str]) -> float:
    """Texts/s of ``encode`` over the corpus at batch 32 (encode sorts it by length)."""
    model.encode(texts[:64], batch_size=32)
    started = time.perf_counter()
    model.encode(texts, batch_size=32)
    return len(texts) / (time.perf_counter() - started)


def raw_times(model: Any, texts: list[str]) -> list[float]:
    """The ms of each text encoded alone."""
    times = []
    for text in texts:
        started = time.perf_counter()
        model.encode([text])
        times.append((time.perf_counter() - started) * 1000)
    return times


def raw_sentence_transformers(
    path: str, texts: list[str], latency_texts: list[str], device: str = "cpu", dtype: str = "float32"
) -> tuple[float, list[float]]:
    """sentence-transformers in this process on all cores: texts/s over the corpus at batch 32
    (encode sorts it by length), and the ms of each text of ``latency_texts`` encoded alone."""
    model = raw_model(path, device, dtype)
    rate, times = raw_rate(model, texts), raw_times(model, latency_texts)
    del model
    gc.collect()
    return rate, times


def sandwiched(model: Any, port: int, name: str, texts: list[str]) -> tuple[list[float], list[float]]:
    """The ms of each text encoded alone in this process, then through the service's Embed (one
    call after another), then in this process again: raw on both sides of the calls, so drift
    (these VMs: ~20% within minutes) hits both alike. Not interleaved call by call: the worker's
    thread policy would see this process's encoding as a busy neighbour and yield a core."""
    before = raw_times(model, texts)
    time.sleep(0.5)  # longer than the thread policy's window
    served = unary_times(port, name, texts)
    return before + raw_times(model, texts), served


def engine_model(path: str, engine: str = "auto") -> Any:
    """The worker's model code for ``path`` in this process on all cores, on the engine a worker picks."""
    from embedstream.registry import ModelSpec
    from embedstream.workers.loader import load

    return load(ModelSpec(name="minilm", family="text-dense", path=path, engine=engine), cores())


def engine_rate(model: Any, texts: list[str]) -> float:
    """Texts/s of the worker's model code over the corpus: tokenized, sorted by length, batches of 32."""
    started = time.perf_counter()
    tokens = sorted(model.tokenize(texts), key=lambda t: -t.length)
    for i in range(0, len(tokens), 32):
        model.forward(tokens[i : i + 32], [True] * len(tokens[i : i + 32]))
    return len(texts) / (time.perf_counter() - started)


def engine_times(model: Any, texts: list[str]) -> list[float]:
    """The ms of each text tokenized and run alone through the worker's model code."""
    times = []
    for text in texts:
        started = time.perf_counter()
        model.forward(model.tokenize([text]), [True])
        times.append((time.perf_counter() - started) * 1000)
    return times
