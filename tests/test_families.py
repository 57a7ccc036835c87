"""Every model family served at once, each equal to its reference library.

One gateway and one worker per family serve tiny randomly initialised models
that were saved by their own libraries and loaded through the service's loaders.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import redis
import torch
from PIL import Image

from embedstream.redis_server import RedisServer
from embedstream.v1 import embedder_pb2 as pb
from embedstream.v1 import embedder_pb2_grpc as pb_grpc
from tests.support import tinymodels
from tests.support.images import picture, rotated_jpeg
from tests.support.processes import (
    Proc,
    base_env,
    entries_added,
    read_replies,
    start_gateway,
    start_workers,
    wait_until,
)

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


@pytest.fixture(scope="module")
def families(redis_server: RedisServer, r: redis.Redis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Families]:
    root = tmp_path_factory.mktemp("tiny")
    models = tinymodels.build_all(root)
    path = root / "models.toml"
    path.write_text(registry(models))
    logs = tmp_path_factory.mktemp("family-logs")
    env = base_env(redis_server.url, path, EMBEDSTREAM_THREADS="1")
    gateway, port = start_gateway(env, logs)
    workers = start_workers(env, logs, MODELS, r)
    yield Families(port, models, workers, gateway)
    for proc in [gateway, *workers.values()]:
        proc.stop()


@pytest.fixture(scope="module")
def stub(families: Families) -> Iterator[pb_grpc.EmbedderStub]:
    with grpc.insecure_channel(f"127.0.0.1:{families.port}") as channel:
        s = pb_grpc.EmbedderStub(channel)
        # The gateway refreshes its view of the workers twice a second.
        wait_until(
            lambda: all(m.serving for m in s.ListModels(pb.ListModelsRequest(), timeout=10).models), 10, what="serving"
        )
        yield s


def texts(items: list[str]) -> list[pb.Input]:
    return [pb.Input(text=t) for t in items]


def values(resp: pb.EmbedResponse) -> np.ndarray:
    return np.array([list(e.values) for e in resp.embeddings], dtype=np.float32)


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


def test_open_clip_images_and_texts_share_one_space(stub: pb_grpc.EmbedderStub, families: Families) -> None:
    import open_clip  # type: ignore[import-untyped]
    from PIL import ImageOps

    name = f"local-dir:{families.models['open_clip']}"
    model, _, preprocess = open_clip.create_model_and_transforms(name)
    model.eval()
    tokenizer = open_clip.get_tokenizer(name)
    pictures = [picture(1), picture(2, (64, 64), "JPEG"), rotated_jpeg(), picture(3, (30, 50), "WEBP", lossless=True)]
    inputs = [pb.Input(text=TEXTS[0]), *[pb.Input(image=p) for p in pictures], pb.Input(text=TEXTS[1])]
    got = values(stub.Embed(pb.EmbedRequest(model="open-clip", inputs=inputs), timeout=30))
    with torch.no_grad():
        pils = [ImageOps.exif_transpose(Image.open(io.BytesIO(p))).convert("RGB") for p in pictures]
        img = model.encode_image(torch.stack([preprocess(p) for p in pils]), normalize=True).numpy()
        txt = model.encode_text(tokenizer(TEXTS[:2]), normalize=True).numpy()
        unrotated = model.encode_image(preprocess(Image.open(io.BytesIO(pictures[2])).convert("RGB"))[None]).numpy()
    expected = np.concatenate([txt[:1], img, txt[1:]])
    assert got.shape == (6, 32) and np.abs(got - expected).max() <= 1e-5
    unrotated /= np.linalg.norm(unrotated)
    assert np.abs(got[3] - unrotated[0]).max() > 1e-3  # EXIF orientation was honoured


def test_transformers_clip_and_siglip_match_transformers(stub: pb_grpc.EmbedderStub, families: Families) -> None:
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    pictures = [picture(4), picture(5, (80, 20), "JPEG")]
    inputs = [
        pb.Input(image=pictures[0]),
        pb.Input(text=TEXTS[2]),
        pb.Input(image=pictures[1]),
        pb.Input(text=TEXTS[0]),
    ]
    for name, key, siglip in (("hf-clip", "hf_clip", False), ("siglip", "siglip", True)):
        folder = str(families.models[key])
        model = AutoModel.from_pretrained(folder).eval()
        tok = AutoTokenizer.from_pretrained(folder)
        proc = AutoImageProcessor.from_pretrained(folder)
        pils = [Image.open(io.BytesIO(p)).convert("RGB") for p in pictures]
        with torch.no_grad():
            img = model.get_image_features(pixel_values=proc(images=pils, return_tensors="pt")["pixel_values"])
            img = getattr(img, "pooler_output", img)
            if siglip:
                ids = tok(
                    [TEXTS[2], TEXTS[0]], padding="max_length", max_length=16, truncation=True, return_tensors="pt"
                )
                txt = model.get_text_features(input_ids=ids["input_ids"])
            else:
                enc = tok([TEXTS[2], TEXTS[0]], padding=True, truncation=True, return_tensors="pt")
                txt = model.get_text_features(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
            txt = getattr(txt, "pooler_output", txt)
        img = torch.nn.functional.normalize(img, dim=-1).numpy()
        txt = torch.nn.functional.normalize(txt, dim=-1).numpy()
        expected = np.stack([img[0], txt[0], img[1], txt[1]])
        got = values(stub.Embed(pb.EmbedRequest(model=name, inputs=inputs), timeout=30))
        assert np.abs(got - expected).max() <= 1e-5, name


def test_sparse_matches_sparse_encoder(stub: pb_grpc.EmbedderStub, families: Families) -> None:
    from sentence_transformers import SparseEncoder

    ref = SparseEncoder(str(families.models["splade"]), device="cpu")
    expected = ref.encode(TEXTS).to_dense().numpy()
    resp = stub.Embed(pb.EmbedRequest(model="splade", inputs=texts(TEXTS), return_tokens=True), timeout=30)
    assert resp.dimensions == 30522
    for row, emb in zip(expected, resp.embeddings):
        nz = np.flatnonzero(row)
        assert list(emb.sparse.indices) == nz.tolist() and len(nz) > 10
        assert np.abs(np.array(emb.sparse.values) - row[nz]).max() <= 1e-5
        assert list(emb.sparse.tokens) == ref.tokenizer.convert_ids_to_tokens(nz.tolist())
    with pytest.raises(grpc.RpcError) as err:
        stub.Embed(pb.EmbedRequest(model="tiny-st", inputs=texts(TEXTS), return_tokens=True), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "return_tokens" in err.value.details()


def test_multi_vector_matches_multi_vector_encoder(stub: pb_grpc.EmbedderStub, families: Families) -> None:
    from sentence_transformers import MultiVectorEncoder

    ref = MultiVectorEncoder(str(families.models["colbert"]), device="cpu")
    for input_type, expected in (
        (pb.INPUT_TYPE_DOCUMENT, ref.encode_document(TEXTS)),
        (pb.INPUT_TYPE_QUERY, ref.encode_query(TEXTS)),
    ):
        for encoding in (pb.VECTOR_ENCODING_FLOAT_LIST, pb.VECTOR_ENCODING_PACKED):
            resp = stub.Embed(
                pb.EmbedRequest(model="colbert", inputs=texts(TEXTS), input_type=input_type, encoding=encoding),
                timeout=30,
            )
            for emb, want in zip(resp.embeddings, expected):
                want = np.asarray(want)
                flat = np.frombuffer(emb.packed, "<f4") if emb.packed else np.array(emb.values, dtype=np.float32)
                assert emb.rows == want.shape[0] and np.abs(flat.reshape(emb.rows, 128) - want).max() <= 1e-5
    # Documents drop punctuation (the model's skiplist); queries keep it.
    doc = stub.Embed(pb.EmbedRequest(model="colbert", inputs=texts(TEXTS[2:]), input_type=2), timeout=30)
    query = stub.Embed(pb.EmbedRequest(model="colbert", inputs=texts(TEXTS[2:]), input_type=1), timeout=30)
    assert doc.embeddings[0].rows < query.embeddings[0].rows
    binary = stub.Embed(
        pb.EmbedRequest(model="colbert", inputs=texts(TEXTS[:1]), output_type=5, encoding=2), timeout=30
    )
    assert len(binary.embeddings[0].packed) == binary.embeddings[0].rows * 16


def test_rerank_matches_cross_encoder(stub: pb_grpc.EmbedderStub, families: Families) -> None:
    from sentence_transformers import CrossEncoder

    query = "what do embedding models do?"
    docs = [*TEXTS, "cats sleep most of the day", "vectors, vectors everywhere"]
    scores = CrossEncoder(str(families.models["rerank"]), device="cpu").predict([(query, d) for d in docs])
    order = np.argsort(-scores, kind="stable")
    resp = stub.Rerank(pb.RerankRequest(model="rerank", query=query, documents=docs, return_documents=True), timeout=30)
    assert [r.index for r in resp.results] == order.tolist()
    assert np.abs(np.array([r.score for r in resp.results]) - scores[order]).max() <= 1e-5
    assert [r.document for r in resp.results] == [docs[i] for i in order]
    top = stub.Rerank(pb.RerankRequest(model="rerank", query=query, documents=docs, top_n=2), timeout=30)
    assert [r.index for r in top.results] == order[:2].tolist() and top.results[0].document == ""
    streamed = list(
        stub.RerankStream(
            iter([pb.RerankRequest(model="rerank", query=query, documents=docs, request_id=str(i)) for i in range(3)]),
            timeout=30,
        )
    )
    assert [s.request_id for s in streamed] == ["0", "1", "2"]
    assert all([r.index for r in s.results] == order.tolist() for s in streamed)
    for call, request, needle in (
        (stub.Rerank, pb.RerankRequest(model="tiny-st", query=query, documents=docs), "Rerank needs a rerank model"),
        (stub.Rerank, pb.RerankRequest(model="rerank", query=" ", documents=docs), "query:"),
        (stub.Rerank, pb.RerankRequest(model="rerank", query=query, documents=["a", ""]), "documents[1]:"),
        (stub.Embed, pb.EmbedRequest(model="rerank", inputs=texts(docs)), "call Rerank"),
    ):
        with pytest.raises(grpc.RpcError) as err:
            call(request, timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and needle in err.value.details()


def test_hostile_images_are_refused_before_queueing(stub: pb_grpc.EmbedderStub, r: redis.Redis) -> None:
    from tests.support.images import SVG, gif, png_bomb, truncated_jpeg

    before = entries_added(r, "clip")
    for data, needle in (
        (png_bomb(), "20000x20000 pixels exceed the limit"),
        (truncated_jpeg(), "truncated JPEG"),
        (SVG, "SVG is not accepted"),
        (gif(), "not a JPEG, PNG or WebP"),
    ):
        request = pb.EmbedRequest(model="clip", inputs=[pb.Input(text="ok"), pb.Input(image=data)])
        with pytest.raises(grpc.RpcError) as err:
            stub.Embed(request, timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith("inputs[1].image:") and needle in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        stub.Embed(pb.EmbedRequest(model="tiny-st", inputs=[pb.Input(image=picture(1))]), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "takes text only" in err.value.details()
    assert entries_added(r, "clip") == before


def test_the_worker_survives_hostile_images_that_skip_the_gateway(
    stub: pb_grpc.EmbedderStub, families: Families, r: redis.Redis
) -> None:
    import time

    from embedstream import keys, wire
    from tests.support.images import SVG, png_bomb, truncated_jpeg

    replies = "test-hostile-replies"
    r.xadd(replies, {"x": "start"})
    hostile = {"bomb": png_bomb(), "truncated": truncated_jpeg(), "svg": SVG, "junk": b"\xff\xd8\xff" + b"\x00" * 64}
    for name, data in hostile.items():
        job = wire.Job(name, replies, int(time.time() * 1000) + 30_000, int(time.time() * 1000), ["fine", data])
        r.xadd(keys.queue("clip"), {keys.PAYLOAD: wire.encode_job(job)})
    answers = read_replies(r, replies, len(hostile))
    assert set(answers) == set(hostile)
    for reply in answers.values():
        assert reply.error_code == "INVALID_ARGUMENT" and reply.error_message.startswith("inputs[1]: image refused")
    assert families.workers["clip"].alive()
    ok = stub.Embed(pb.EmbedRequest(model="clip", inputs=[pb.Input(image=picture(9))]), timeout=30)
    assert len(ok.embeddings[0].values) == 32


def test_jobs_take_images_and_every_option(stub: pb_grpc.EmbedderStub, families: Families) -> None:
    from embedstream.v1 import jobs_pb2 as jpb
    from embedstream.v1 import jobs_pb2_grpc as jpb_grpc

    inputs = [pb.Input(text=TEXTS[0]), pb.Input(image=picture(11)), pb.Input(image=picture(12, fmt="JPEG"))]
    cases = [
        ("clip", {"output_type": pb.OUTPUT_TYPE_INT8}, inputs),
        ("tiny-st", {"input_type": pb.INPUT_TYPE_QUERY, "dimensions": 8}, texts(TEXTS)),
        ("splade", {}, texts(TEXTS)),
    ]
    with grpc.insecure_channel(f"127.0.0.1:{families.port}") as channel:
        jobs = jpb_grpc.JobsStub(channel)
        for model, options, items in cases:
            direct = stub.Embed(
                pb.EmbedRequest(model=model, inputs=items, encoding=pb.VECTOR_ENCODING_PACKED, **options), timeout=30
            )
            job = jobs.SubmitJob(
                jpb.SubmitJobRequest(spec=jpb.JobSpec(model=model, **options), inputs=items), timeout=30
            )
            wait_until(
                lambda j=job: jobs.GetJob(jpb.GetJobRequest(id=j.id)).state == jpb.JOB_STATE_SUCCEEDED, 60, what="job"
            )
            results = list(
                jobs.GetJobResults(jpb.GetJobResultsRequest(id=job.id, encoding=pb.VECTOR_ENCODING_PACKED), timeout=30)
            )
            assert [res.index for res in results] == list(range(len(items)))
            for got, want in zip((res.embedding for res in results), direct.embeddings):
                # Batches of a job and of a call are cut differently: floats may differ in the last bits.
                assert list(got.sparse.indices) == list(want.sparse.indices), model
                assert np.allclose(got.sparse.values, want.sparse.values, atol=1e-5), model
                quantized = options.get("output_type") == pb.OUTPUT_TYPE_INT8
                a, b = (np.frombuffer(e.packed, "i1" if quantized else "<f4").astype(float) for e in (got, want))
                assert a.shape == b.shape and np.abs(a - b).max(initial=0) <= (1 if quantized else 1e-5), model
        for spec, needle in (
            (jpb.JobSpec(model="rerank"), "spec.model: 'rerank' is a rerank model"),
            (jpb.JobSpec(model="tiny-st", dimensions=3), "spec.dimensions:"),
            (jpb.JobSpec(model="tiny-st", prompt_name="x"), "spec.prompt_name:"),
        ):
            with pytest.raises(grpc.RpcError) as err:
                jobs.SubmitJob(jpb.SubmitJobRequest(spec=spec, inputs=texts(TEXTS)), timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and needle in err.value.details()


def test_python_client_embeds_images_with_prompts_and_reranks(stub: pb_grpc.EmbedderStub, families: Families) -> None:
    from embedstream.client import Client

    image = picture(13)
    with Client(f"127.0.0.1:{families.port}") as client:
        mixed = client.embed([TEXTS[0], image], model="clip")
        cut = client.embed(TEXTS, model="tiny-st", input_type="query", dimensions=16)
        ranked = client.rerank("what is a cat?", TEXTS, model="rerank", top_n=2)
    direct = values(stub.Embed(pb.EmbedRequest(model="clip", inputs=[pb.Input(text=TEXTS[0]), pb.Input(image=image)])))
    assert np.abs(mixed - direct).max() <= 1e-6
    query = stub.Embed(pb.EmbedRequest(model="tiny-st", inputs=texts(TEXTS), input_type=1, dimensions=16))
    assert cut.shape == (3, 16) and np.abs(cut - values(query)).max() <= 1e-6
    full = stub.Rerank(pb.RerankRequest(model="rerank", query="what is a cat?", documents=TEXTS))
    assert ranked == [(r.index, r.score) for r in full.results[:2]]
