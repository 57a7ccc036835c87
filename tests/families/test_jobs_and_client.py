"""Every family through jobs and through the Python client."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from embedstream.v1 import embedder_pb2 as pb
from embedstream.v1 import embedder_pb2_grpc as pb_grpc
from tests.support.families import TEXTS, Families, texts, values
from tests.support.images import picture
from tests.support.processes import wait_until


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
