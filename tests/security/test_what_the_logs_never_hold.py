"""What the logs never hold: API keys and input text.

Its name sorts last in tests/security/, so the logs it reads hold every other test's traffic too."""

from __future__ import annotations

import grpc
import pytest

from embedstream import apikeys
from embedstream.v1 import embedder_pb2 as pb
from embedstream.v1 import embedder_pb2_grpc as pb_grpc
from embedstream.v1 import jobs_pb2 as jpb
from embedstream.v1 import jobs_pb2_grpc as jpb_grpc
from tests.security.conftest import Secure
from tests.support.corpora import SENTINEL
from tests.support.processes import Proc
from tests.support.rpcs import bearer


def test_logs_hold_no_api_key_and_no_input_text(secure: Secure, second: tuple[Proc, int], worker: Proc) -> None:
    wrong = apikeys.new_key()
    with grpc.insecure_channel(f"127.0.0.1:{secure.port}") as channel:
        stub, jobs = pb_grpc.EmbedderStub(channel), jpb_grpc.JobsStub(channel)
        acme = bearer(secure.keys["acme"])
        secret = [pb.Input(text=SENTINEL)]
        stub.Embed(pb.EmbedRequest(inputs=secret), metadata=acme, timeout=10)
        list(stub.EmbedStream(iter([pb.EmbedRequest(inputs=secret)]), metadata=acme, timeout=10))
        jobs.SubmitJob(jpb.SubmitJobRequest(spec=jpb.JobSpec(model="debug"), inputs=secret), metadata=acme)
        for bad in (pb.EmbedRequest(model="nope", inputs=secret), pb.EmbedRequest(inputs=secret, dimensions=3)):
            with pytest.raises(grpc.RpcError):
                stub.Embed(bad, metadata=acme, timeout=10)
        for metadata in (bearer(wrong), [("authorization", wrong)]):
            with pytest.raises(grpc.RpcError):
                stub.Embed(pb.EmbedRequest(inputs=secret), metadata=metadata, timeout=10)
    logs = {"gateway": secure.gateway.log(), "second gateway": second[0].log(), "worker": worker.log()}
    assert "refused /embedstream.v1.Embedder/Embed" in logs["gateway"]  # failures are logged, without the key
    assert "without authentication" not in logs["gateway"]  # loopback with keys: no warning
    for name, text in logs.items():
        for key in [wrong, *secure.keys.values()]:
            assert key not in text, f"an API key is in the {name} log"
        assert SENTINEL not in text, f"input text is in the {name} log"
