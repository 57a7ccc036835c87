"""Video and audio beside the cache, token ids and truncation_side: clips never use the embedding
cache (texts sent alone through the same model do), token ids are refused for media families
naming the field, and CLAP's texts are cut on the left exactly as transformers cuts them.

One gateway and a tiny CLAP worker with the cache on; the clips are generated on the spot.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import redis
import torch

from embedstream import keys
from embedstream.redis_server import RedisServer
from embedstream.v1 import embedder_pb2 as pb
from embedstream.v1 import embedder_pb2_grpc as pb_grpc
from tests.support import media, tinymodels
from tests.support.processes import base_env, entries_added, start_gateway, start_workers, wait_until

MODEL = "clap-options"


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> object:
    return tinymodels.clap_model(tmp_path_factory.mktemp("clap-options") / "clap")


@pytest.fixture(scope="module")
def stub(
    redis_server: RedisServer, r: redis.Redis, folder: object, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[pb_grpc.EmbedderStub]:
    root = tmp_path_factory.mktemp("clap-options-run")
    registry = root / "models.toml"
    registry.write_text(f'default = "{MODEL}"\n[models.{MODEL}]\nfamily = "audio-text"\npath = "{folder}"\n')
    env = base_env(redis_server.url, registry, EMBEDSTREAM_THREADS="1", EMBEDSTREAM_CACHE_BYTES=str(16 << 20))
    gateway, port = start_gateway(env, root)
    try:
        workers = start_workers(env, root, [MODEL], r)
    except BaseException:
        gateway.kill()
        raise
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            s = pb_grpc.EmbedderStub(channel)
            wait_until(lambda: all(m.serving for m in s.ListModels(pb.ListModelsRequest()).models), 10, what="serving")
            yield s
    finally:
        for proc in [gateway, *workers.values()]:
            proc.stop()


def values(resp: pb.EmbedResponse) -> np.ndarray:
    return np.array([list(e.values) for e in resp.embeddings], dtype=np.float32)


def test_clips_never_use_the_cache_while_texts_alone_do(stub: pb_grpc.EmbedderStub, r: redis.Redis) -> None:
    clip = media.audio(media.tones([(3.0, 440), (2.0, 880)], 16000), 16000, "wav")
    request = pb.EmbedRequest(model=MODEL, inputs=[pb.Input(audio=clip), pb.Input(text="the dog")])
    first, second = (stub.Embed(request, timeout=60) for _ in range(2))
    assert first.metadata.cached_inputs == second.metadata.cached_inputs == 0
    assert np.array_equal(values(first), values(second))
    text = pb.EmbedRequest(model=MODEL, inputs=[pb.Input(text="the dog")])
    stub.Embed(text, timeout=30)
    wait_until(lambda: stub.Embed(text, timeout=30).metadata.cached_inputs == 1, 10, what="a text cache hit")
    # The text is cached now; beside a clip it still is not looked up: the whole entry skips the cache.
    assert stub.Embed(request, timeout=60).metadata.cached_inputs == 0
    assert len(list(r.scan_iter(keys.cache_record(MODEL, "*"), count=1000))) == 1


def test_token_ids_are_refused_for_a_media_family_naming_the_field(stub: pb_grpc.EmbedderStub, r: redis.Redis) -> None:
    before = entries_added(r, MODEL)
    request = pb.EmbedRequest(model=MODEL, inputs=[pb.Input(text="a"), pb.Input(tokens=pb.TokenIds(ids=[5, 6]))])
    with pytest.raises(grpc.RpcError) as err:
        stub.Embed(request, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(f"inputs[1].tokens: model '{MODEL}' is a audio-text model; token ids are for")
    assert entries_added(r, MODEL) == before


def test_clap_texts_are_cut_on_the_left_as_transformers_cuts_them(stub: pb_grpc.EmbedderStub, folder: object) -> None:
    from transformers import ClapModel, ClapProcessor

    long = " ".join(f"word{i}" for i in range(400))  # well over the 512 tokens CLAP's text tower reads
    model = ClapModel.from_pretrained(folder).eval()
    tokenizer = ClapProcessor.from_pretrained(folder).tokenizer
    expected = {}
    for side in ("left", "right"):
        tokenizer.truncation_side = side
        with torch.no_grad():
            out = model.get_text_features(**tokenizer([long], truncation=True, max_length=512, return_tensors="pt"))
        expected[side] = torch.nn.functional.normalize(out.pooler_output, dim=-1).numpy()
    assert np.abs(expected["left"] - expected["right"]).max() > 1e-3  # the sides differ: the test can fail
    for side, value in (("left", pb.TRUNCATION_SIDE_LEFT), ("right", pb.TRUNCATION_SIDE_RIGHT)):
        request = pb.EmbedRequest(
            model=MODEL, inputs=[pb.Input(text=long)], truncation_side=value, cache=pb.CACHE_BYPASS
        )
        resp = stub.Embed(request, timeout=60)
        assert resp.metadata.truncated_inputs == 1
        assert np.abs(values(resp) - expected[side]).max() <= 1e-4, side
