"""What the media tests share: the served gateway and workers (``Media``), vectors, segments and refusals of a call."""

from __future__ import annotations

import time

import grpc
import pytest

from embedstream.v1 import embedder_pb2 as pb
from embedstream.v1 import embedder_pb2_grpc as pb_grpc
from tests.support.families import Families

SCENES = (2.0, 1.5, 2.5)
TOL = 1e-5


#: The served gateway, as the family tests keep theirs: its port, the models' folders, workers and gateway.
Media = Families


def spans(resp: pb.EmbedResponse) -> list[tuple[int, int, float, float, bool]]:
    """Each Embedding's segment, times to the millisecond."""
    return [
        (e.segment.input, e.segment.index, round(e.segment.start_s, 3), round(e.segment.end_s, 3), e.segment.pooled)
        for e in resp.embeddings
    ]


def refused(stub: pb_grpc.EmbedderStub, request: pb.EmbedRequest) -> tuple[grpc.StatusCode, str, float]:
    started = time.perf_counter()
    with pytest.raises(grpc.RpcError) as err:
        stub.Embed(request, timeout=30)
    return err.value.code(), err.value.details(), time.perf_counter() - started
