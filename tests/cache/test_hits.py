"""A hit is the miss byte for byte and skips the model; refresh recomputes and overwrites; bypass
neither reads nor writes; the cache outlives its worker; options that change the model's output
never share a record. Through gRPC Embed, on real workers of MiniLM, SPLADE and ColBERT models."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from embedstream import cache
from embedstream.v1 import embedder_pb2 as pb
from tests.support.cached import Cached
from tests.support.corpora import texts as corpus
from tests.support.processes import stub, wait_until

PACKED = pb.VECTOR_ENCODING_PACKED


def request(texts: list[str], model: str = "cmini", **kw: Any) -> pb.EmbedRequest:
    kw.setdefault("encoding", PACKED)
    return pb.EmbedRequest(model=model, inputs=[pb.Input(text=t) for t in texts], **kw)


def vectors(resp: pb.EmbedResponse) -> list[bytes]:
    """Every embedding as its serialized message: packed bytes, sparse pairs, rows, chunk spans."""
    return [e.SerializeToString() for e in resp.embeddings]


def test_a_hit_is_the_miss_byte_for_byte_and_the_model_does_not_run(cached: Cached) -> None:
    texts = ["the cache keeps what the model computed", "a second sentence, rather different", "third"]
    with stub(cached.port) as s:
        calls = cached.calls("cmini")
        miss = s.Embed(request(texts), timeout=30)
        assert miss.metadata.cached_inputs == 0 and cached.calls("cmini") > calls
        cached.stored("cmini", 3)
        calls, hits = cached.calls("cmini"), cached.metric("cmini", "embedstream_cache_hits_total")
        hit = s.Embed(request(texts), timeout=30)
        assert hit.metadata.cached_inputs == 3 and cached.calls("cmini") == calls
        assert vectors(hit) == vectors(miss)
        assert hit.metadata.tokens == miss.metadata.tokens and hit.metadata.inference_ms == 0
        assert cached.metric("cmini", "embedstream_cache_hits_total") == hits + 3
        # The record is the model's output: another output type is finished from it, as from a pass.
        int8 = s.Embed(request(texts, output_type=pb.OUTPUT_TYPE_INT8), timeout=30)
        computed = s.Embed(request(texts, output_type=pb.OUTPUT_TYPE_INT8, cache=pb.CACHE_BYPASS), timeout=30)
        assert int8.metadata.cached_inputs == 3 and vectors(int8) == vectors(computed)
        # Some inputs cached, some not: only the new one runs, and each is where it belongs.
        mixed = s.Embed(request([texts[2], "a sentence nobody embedded yet", texts[0]]), timeout=30)
        alone = s.Embed(request(["a sentence nobody embedded yet"], cache=pb.CACHE_BYPASS), timeout=30)
        assert mixed.metadata.cached_inputs == 2
        assert vectors(mixed) == [vectors(miss)[2], vectors(alone)[0], vectors(miss)[0]]


@pytest.mark.parametrize(("model", "extra"), [("csplade", {"return_tokens": True}), ("ccolbert", {})])
def test_sparse_and_multi_vector_hits_are_their_misses(cached: Cached, model: str, extra: dict[str, Any]) -> None:
    texts = [f"{model} keeps token weights", f"and {model} token vectors", "x"]
    with stub(cached.port) as s:
        miss = s.Embed(request(texts, model, **extra), timeout=30)
        cached.stored(model, 3)
        calls = cached.calls(model)
        hit = s.Embed(request(texts, model, **extra), timeout=30)
        assert hit.metadata.cached_inputs == 3 and cached.calls(model) == calls
        assert vectors(hit) == vectors(miss)


def test_chunked_inputs_are_cached_whole_per_input(cached: Cached) -> None:
    long = " ".join(corpus(12))
    chunks = pb.ChunkOptions(size_tokens=64, overlap_tokens=16, output=pb.CHUNK_OUTPUT_CHUNKS)
    kw: dict[str, Any] = {"long_inputs": pb.LONG_INPUTS_CHUNK, "chunking": chunks}
    with stub(cached.port) as s:
        miss = s.Embed(request([long, "short one"], **kw), timeout=60)
        assert miss.metadata.chunks > 2
        cached.stored("cmini", 2)
        calls = cached.calls("cmini")
        hit = s.Embed(request(["a fresh short text", long, "short one"], **kw), timeout=60)
        assert hit.metadata.cached_inputs == 2 and hit.metadata.chunks == miss.metadata.chunks + 1
        assert cached.calls("cmini") == calls + 1  # the fresh text's one chunk
        first, *rest = hit.embeddings
        assert first.chunk.input == 0
        for e in rest:
            e.chunk.input -= 1  # the miss had these inputs one place earlier
        assert [e.SerializeToString() for e in rest] == vectors(miss)
        # One vector per input, pooled from the same records.
        pooled = dict(kw, chunking=pb.ChunkOptions(size_tokens=64, overlap_tokens=16))
        fresh = s.Embed(request([long], cache=pb.CACHE_BYPASS, **pooled), timeout=60)
        again = s.Embed(request([long], **pooled), timeout=60)
        assert again.metadata.cached_inputs == 1 and vectors(again) == vectors(fresh)


def test_refresh_recomputes_and_overwrites_and_bypass_neither_reads_nor_writes(cached: Cached) -> None:
    text = ["a text whose record is tampered with"]
    with stub(cached.port) as s:
        before = cached.records("cdebug")
        true = s.Embed(request(text, "cdebug"), timeout=30)
        (key,) = cached.stored("cdebug", len(before) + 1) - before
        # A record of the right shape but other values: what a hit returns is what the record holds.
        forged = cache.encode_record("dense", [cache.Part(np.full(64, 0.125, np.float32), 3, False)])
        cached.r.set(key, forged, keepttl=True)
        assert vectors(s.Embed(request(text, "cdebug"), timeout=30)) != vectors(true)
        calls, misses = cached.calls("cdebug"), cached.metric("cdebug", "embedstream_cache_misses_total")
        bypassed = s.Embed(request(text, "cdebug", cache=pb.CACHE_BYPASS), timeout=30)
        assert bypassed.metadata.cached_inputs == 0 and vectors(bypassed) == vectors(true)
        assert cached.calls("cdebug") == calls + 1 and cached.r.get(key) == forged  # read nothing, wrote nothing
        new = s.Embed(request(["bypassed, never stored"], "cdebug", cache=pb.CACHE_BYPASS), timeout=30)
        assert new.metadata.cached_inputs == 0 and len(cached.records("cdebug")) == len(before) + 1
        assert cached.metric("cdebug", "embedstream_cache_misses_total") == misses
        refreshed = s.Embed(request(text, "cdebug", cache=pb.CACHE_REFRESH), timeout=30)
        assert refreshed.metadata.cached_inputs == 0 and vectors(refreshed) == vectors(true)
        assert cached.calls("cdebug") == calls + 3
        wait_until(lambda: cached.r.get(key) != forged, 10, what="the refreshed record")
        hit = s.Embed(request(text, "cdebug"), timeout=30)
        assert hit.metadata.cached_inputs == 1 and vectors(hit) == vectors(true)


def test_the_cache_outlives_its_worker(cached: Cached) -> None:
    texts = ["kept across a worker restart", "and this one too"]
    with stub(cached.port) as s:
        miss = s.Embed(request(texts), timeout=30)
        cached.stored("cmini", 2)
        cached.restart("cmini")  # a new process computes the same fingerprint from the same folder
        hit = s.Embed(request(texts), timeout=60)
    assert hit.metadata.cached_inputs == 2 and vectors(hit) == vectors(miss)
    assert cached.calls("cmini") == 0


def test_options_that_change_the_models_output_never_share_a_record(cached: Cached) -> None:
    text = ["one text under many options"]
    variants: list[dict[str, Any]] = [
        {},
        {"normalize": False},
        {"input_type": pb.INPUT_TYPE_QUERY},
        {"dimensions": 32},
        {"truncate": False},
        {"long_inputs": pb.LONG_INPUTS_CHUNK},
        {"long_inputs": pb.LONG_INPUTS_CHUNK, "chunking": pb.ChunkOptions(size_tokens=16)},
    ]
    with stub(cached.port) as s:
        before = len(cached.records("cdebug"))
        for i, options in enumerate(variants):
            first = s.Embed(request(text, "cdebug", **options), timeout=30)
            assert first.metadata.cached_inputs == 0, options
            cached.stored("cdebug", before + i + 1)
            assert s.Embed(request(text, "cdebug", **options), timeout=30).metadata.cached_inputs == 1
        # Applied after the model, from the one record: the output type and the encoding.
        for options in ({"output_type": pb.OUTPUT_TYPE_BINARY}, {"encoding": pb.VECTOR_ENCODING_FLOAT_LIST}):
            assert s.Embed(request(text, "cdebug", **options), timeout=30).metadata.cached_inputs == 1
    assert len(cached.records("cdebug")) == before + len(variants)
