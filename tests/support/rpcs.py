"""Every RPC of the protos as one call with given metadata, and the metadata of an API key."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc

from embedstream.v1 import embedder_pb2 as pb
from embedstream.v1 import embedder_pb2_grpc as pb_grpc
from embedstream.v1 import jobs_pb2 as jpb
from embedstream.v1 import jobs_pb2_grpc as jpb_grpc

UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED


def bearer(key: str) -> list[tuple[str, str]]:
    """gRPC metadata that presents API key ``key``."""
    return [("authorization", f"Bearer {key}")]


def inputs(n: int, prefix: str = "text") -> list[pb.Input]:
    """``n`` text inputs, ``"<prefix> <i>"``."""
    return [pb.Input(text=f"{prefix} {i}") for i in range(n)]


def refused(call: Callable[[], Any]) -> bool:
    """Whether ``call`` fails with UNAUTHENTICATED."""
    try:
        call()
    except grpc.RpcError as exc:
        return bool(exc.code() == UNAUTHENTICATED)
    return False


Call = Callable[[grpc.Channel, list[tuple[str, str]], str], Any]


def _upload() -> Iterator[jpb.UploadJobRequest]:
    yield jpb.UploadJobRequest(header=jpb.JobSpec(model="debug"))
    yield jpb.UploadJobRequest(chunk=jpb.InputChunk(inputs=inputs(2)))


#: Every RPC of Embedder and Jobs, run to completion with valid requests (a job id of acme's).
RPCS: dict[str, Call] = {
    "Embed": lambda ch, md, _: pb_grpc.EmbedderStub(ch).Embed(pb.EmbedRequest(inputs=inputs(2)), metadata=md),
    "EmbedStream": lambda ch, md, _: list(
        pb_grpc.EmbedderStub(ch).EmbedStream(iter([pb.EmbedRequest(inputs=inputs(2))]), metadata=md)
    ),
    "ListModels": lambda ch, md, _: pb_grpc.EmbedderStub(ch).ListModels(pb.ListModelsRequest(), metadata=md),
    "Rerank": lambda ch, md, _: pb_grpc.EmbedderStub(ch).Rerank(
        pb.RerankRequest(query="q", documents=["d"]), metadata=md
    ),
    "RerankStream": lambda ch, md, _: list(
        pb_grpc.EmbedderStub(ch).RerankStream(iter([pb.RerankRequest(query="q", documents=["d"])]), metadata=md)
    ),
    "Classify": lambda ch, md, _: pb_grpc.EmbedderStub(ch).Classify(pb.ClassifyRequest(inputs=["t"]), metadata=md),
    "ClassifyStream": lambda ch, md, _: list(
        pb_grpc.EmbedderStub(ch).ClassifyStream(iter([pb.ClassifyRequest(inputs=["t"])]), metadata=md)
    ),
    "Tokenize": lambda ch, md, _: pb_grpc.EmbedderStub(ch).Tokenize(pb.TokenizeRequest(inputs=["t"]), metadata=md),
    "Decode": lambda ch, md, _: pb_grpc.EmbedderStub(ch).Decode(
        pb.DecodeRequest(inputs=[pb.TokenIds(ids=[1])]), metadata=md
    ),
    "SubmitJob": lambda ch, md, _: jpb_grpc.JobsStub(ch).SubmitJob(
        jpb.SubmitJobRequest(spec=jpb.JobSpec(model="debug"), inputs=inputs(2)), metadata=md
    ),
    "UploadJob": lambda ch, md, _: jpb_grpc.JobsStub(ch).UploadJob(_upload(), metadata=md),
    "GetJob": lambda ch, md, job: jpb_grpc.JobsStub(ch).GetJob(jpb.GetJobRequest(id=job), metadata=md),
    "WatchJob": lambda ch, md, job: list(jpb_grpc.JobsStub(ch).WatchJob(jpb.GetJobRequest(id=job), metadata=md)),
    "GetJobResults": lambda ch, md, job: list(
        jpb_grpc.JobsStub(ch).GetJobResults(jpb.GetJobResultsRequest(id=job), metadata=md)
    ),
    "CancelJob": lambda ch, md, job: jpb_grpc.JobsStub(ch).CancelJob(jpb.GetJobRequest(id=job), metadata=md),
}

SERVICES = (pb.DESCRIPTOR.services_by_name["Embedder"], jpb.DESCRIPTOR.services_by_name["Jobs"])

#: The Jobs RPCs that name an existing job.
JOB_RPCS = sorted(m.name for m in SERVICES[1].methods if "id" in m.input_type.fields_by_name)
