"""Text families (prompts, Matryoshka, output types) and ListModels, against sentence-transformers."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import redis

from embedstream.v1 import embedder_pb2 as pb
from embedstream.v1 import embedder_pb2_grpc as pb_grpc
from tests.support.families import MODELS, PROMPTS, TEXTS, Families, texts, values
from tests.support.processes import entries_added


def test_list_models_shows_every_family_with_capabilities(stub: pb_grpc.EmbedderStub) -> None:
    listed = {m.name: m for m in stub.ListModels(pb.ListModelsRequest(), timeout=10).models}
    assert set(listed) == set(MODELS)
    families = {name: pb.ModelFamily.Name(m.family) for name, m in listed.items()}
    assert families == {
        "tiny-st": "MODEL_FAMILY_TEXT_DENSE",
        "clip": "MODEL_FAMILY_IMAGE_TEXT",
        "hf-clip": "MODEL_FAMILY_IMAGE_TEXT",
        "siglip": "MODEL_FAMILY_IMAGE_TEXT",
        "splade": "MODEL_FAMILY_SPARSE",
        "colbert": "MODEL_FAMILY_MULTI_VECTOR",
        "rerank": "MODEL_FAMILY_RERANK",
    }
    assert all(m.serving and m.workers == 1 for m in listed.values())
    st = listed["tiny-st"]
    assert st.version == "tiny-1" and st.device == "cpu" and st.dtype == "float32" and st.dimensions == 32
    assert list(st.capabilities.matryoshka_dimensions) == [16, 8]
    assert list(st.capabilities.prompts) == sorted(PROMPTS)
    assert (st.capabilities.query_prompt, st.capabilities.document_prompt) == ("query", "document")
    assert len(st.capabilities.output_types) == 6 and not st.capabilities.image
    assert listed["clip"].capabilities.image and listed["clip"].dimensions == 32
    assert listed["splade"].dimensions == 30522 and list(listed["splade"].capabilities.output_types) == [0]
    assert listed["colbert"].dimensions == 128


def test_prompts_and_input_types_match_sentence_transformers(stub: pb_grpc.EmbedderStub, families: Families) -> None:
    from sentence_transformers import SentenceTransformer

    ref = SentenceTransformer(str(families.models["st"]), device="cpu")
    cases = [
        ({"input_type": pb.INPUT_TYPE_QUERY}, "query: "),
        ({"input_type": pb.INPUT_TYPE_DOCUMENT}, "passage: "),
        ({"prompt_name": "classify", "input_type": pb.INPUT_TYPE_QUERY}, "classify this: "),
        ({}, ""),
    ]
    for options, prompt in cases:
        got = values(stub.Embed(pb.EmbedRequest(model="tiny-st", inputs=texts(TEXTS), **options), timeout=30))
        expected = ref.encode(TEXTS, prompt=prompt) if prompt else ref.encode(TEXTS)
        assert np.abs(got - expected).max() <= 1e-5, options
    plain = values(stub.Embed(pb.EmbedRequest(model="tiny-st", inputs=texts(TEXTS)), timeout=30))
    queried = values(stub.Embed(pb.EmbedRequest(model="tiny-st", inputs=texts(TEXTS), input_type=1), timeout=30))
    assert np.abs(plain - queried).max() > 1e-3  # the prompt really changed the input
    with pytest.raises(grpc.RpcError) as err:
        stub.Embed(pb.EmbedRequest(model="tiny-st", inputs=texts(TEXTS), prompt_name="nope"), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "prompt_name" in err.value.details() and "tiny-st" in err.value.details()


def test_matryoshka_cuts_and_renormalizes_only_declared_sizes(
    stub: pb_grpc.EmbedderStub, families: Families, r: redis.Redis
) -> None:
    from sentence_transformers import SentenceTransformer

    full = SentenceTransformer(str(families.models["st"]), device="cpu").encode(TEXTS)
    for size in (16, 8, 32):
        resp = stub.Embed(pb.EmbedRequest(model="tiny-st", inputs=texts(TEXTS), dimensions=size), timeout=30)
        cut = full[:, :size] / np.linalg.norm(full[:, :size], axis=1, keepdims=True)
        assert resp.dimensions == size and np.abs(values(resp) - cut).max() <= 1e-5
    unnormalized = stub.Embed(
        pb.EmbedRequest(model="tiny-st", inputs=texts(TEXTS), dimensions=8, normalize=False), timeout=30
    )
    assert abs(np.linalg.norm(values(unnormalized)[0]) - 1) > 1e-3  # cut without re-normalizing
    before = entries_added(r, "tiny-st")
    for model, size, needle in (("tiny-st", 12, "accepts [32, 16, 8]"), ("splade", 8, "declares no Matryoshka")):
        with pytest.raises(grpc.RpcError) as err:
            stub.Embed(pb.EmbedRequest(model=model, inputs=texts(TEXTS), dimensions=size), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith("dimensions:") and needle in err.value.details()
    assert entries_added(r, "tiny-st") == before


def test_output_types_follow_the_documented_scheme(stub: pb_grpc.EmbedderStub) -> None:
    from sentence_transformers.util.quantization import quantize_embeddings

    base = values(stub.Embed(pb.EmbedRequest(model="tiny-st", inputs=texts(TEXTS)), timeout=30))
    ranges = np.array([[-1.0] * 32, [1.0] * 32], dtype=np.float32)
    expected = {
        pb.OUTPUT_TYPE_INT8: quantize_embeddings(base, "int8", ranges=ranges),
        pb.OUTPUT_TYPE_UINT8: quantize_embeddings(base, "uint8", ranges=ranges),
        pb.OUTPUT_TYPE_BINARY: quantize_embeddings(base, "binary"),
        pb.OUTPUT_TYPE_UBINARY: quantize_embeddings(base, "ubinary"),
        pb.OUTPUT_TYPE_FLOAT16: base.astype(np.float16),
    }
    for output_type, want in expected.items():
        listed = stub.Embed(pb.EmbedRequest(model="tiny-st", inputs=texts(TEXTS), output_type=output_type), timeout=30)
        packed = stub.Embed(
            pb.EmbedRequest(
                model="tiny-st", inputs=texts(TEXTS), output_type=output_type, encoding=pb.VECTOR_ENCODING_PACKED
            ),
            timeout=30,
        )
        assert listed.output_type == output_type
        raw = np.stack([np.frombuffer(e.packed, dtype=want.dtype.newbyteorder("<")) for e in packed.embeddings])
        assert np.array_equal(raw, want), pb.OutputType.Name(output_type)
        if output_type == pb.OUTPUT_TYPE_FLOAT16:
            assert np.array_equal(values(listed), want.astype(np.float32))
        else:
            assert np.array_equal(np.array([list(e.int_values) for e in listed.embeddings]), want.astype(np.int32))
    with pytest.raises(grpc.RpcError) as err:
        stub.Embed(
            pb.EmbedRequest(
                model="tiny-st", inputs=texts(TEXTS), output_type=2, encoding=pb.VECTOR_ENCODING_PACKED_F32LE
            ),
            timeout=10,
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and err.value.details().startswith("encoding:")
    for model in ("splade", "rerank"):
        with pytest.raises(grpc.RpcError) as err:
            stub.Embed(pb.EmbedRequest(model=model, inputs=texts(TEXTS), output_type=2), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert model in err.value.details()
