"""Tenants: another tenant's jobs look missing, and idempotency keys are per tenant."""

from __future__ import annotations

import grpc
import pytest

from embedstream.v1 import jobs_pb2 as jpb
from embedstream.v1 import jobs_pb2_grpc as jpb_grpc
from tests.security.conftest import Secure
from tests.support.rpcs import JOB_RPCS, RPCS, bearer, inputs


@pytest.mark.parametrize("rpc", JOB_RPCS)
def test_another_tenants_job_is_not_found_exactly_like_a_missing_one(secure: Secure, rpc: str) -> None:
    missing = "0" * 32
    with grpc.insecure_channel(f"127.0.0.1:{secure.port}") as channel:
        for job in (secure.done_job, secure.open_job):
            with pytest.raises(grpc.RpcError) as theirs:
                RPCS[rpc](channel, bearer(secure.keys["globex"]), job)
            with pytest.raises(grpc.RpcError) as nobodys:
                RPCS[rpc](channel, bearer(secure.keys["globex"]), missing)
            assert theirs.value.code() == nobodys.value.code() == grpc.StatusCode.NOT_FOUND
            assert theirs.value.details().replace(job, "ID") == nobodys.value.details().replace(missing, "ID")
        still = jpb_grpc.JobsStub(channel).GetJob(
            jpb.GetJobRequest(id=secure.open_job), metadata=bearer(secure.keys["acme"])
        )
    assert still.state == jpb.JOB_STATE_QUEUED  # another tenant's CancelJob changed nothing


def test_idempotency_keys_are_per_tenant(secure: Secure) -> None:
    def submit(tenant: str) -> str:
        spec = jpb.JobSpec(model="orphan", idempotency_key="nightly")
        with grpc.insecure_channel(f"127.0.0.1:{secure.port}") as channel:
            stub = jpb_grpc.JobsStub(channel)
            job = stub.SubmitJob(
                jpb.SubmitJobRequest(spec=spec, inputs=inputs(1)), metadata=bearer(secure.keys[tenant])
            )
        return str(job.id)

    acme, globex = submit("acme"), submit("globex")
    assert acme != globex and submit("acme") == acme and submit("globex") == globex
