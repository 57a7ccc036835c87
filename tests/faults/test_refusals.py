"""Redis refusing work, injected with real parts: maxmemory, a replica's read-only mode, ACL rules.

Every refusal reaches the caller as its documented status (never INTERNAL or UNKNOWN), every
background loop survives a failure of its own and carries on, and caller-supplied strings are
cut short in error messages.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import grpc
import pytest

from embedstream import keys
from embedstream.client import retry_after
from embedstream.redis_server import free_port
from embedstream.v1 import embedder_pb2 as pb
from embedstream.v1 import jobs_pb2 as jpb
from embedstream.v1 import jobs_pb2_grpc
from tests.support.faults import Cluster, metrics_port
from tests.support.processes import answers, scrape, stub, wait_until


def _as_user(cluster: Cluster, user: str) -> str:
    """A Redis URL for ``user``, made with every permission (the tests take some away)."""
    cluster.r.execute_command("ACL", "SETUSER", user, "reset", "on", ">secret", "~*", "&*", "+@all")
    return cluster.redis_server.url.replace("redis://", f"redis://{user}:secret@")


@contextmanager
def _denied(cluster: Cluster, user: str, *commands: str) -> Iterator[None]:
    """``user`` may not run ``commands`` (nor may scripts it runs) until the block ends."""
    cluster.r.execute_command("ACL", "SETUSER", user, *(f"-{c}" for c in commands))
    try:
        yield
    finally:
        cluster.r.execute_command("ACL", "SETUSER", user, *(f"+{c}" for c in commands))


def _outcomes(port: int) -> dict[str, grpc.RpcError]:
    """The errors an Embed and a SubmitJob get now."""
    out: dict[str, grpc.RpcError] = {}
    with stub(port) as s, grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        calls: dict[str, Callable[[], object]] = {
            "Embed": lambda: s.Embed(pb.EmbedRequest(model="fault", inputs=[pb.Input(text="x")]), timeout=10),
            "SubmitJob": lambda: jobs_pb2_grpc.JobsStub(channel).SubmitJob(
                jpb.SubmitJobRequest(spec=jpb.JobSpec(model="fault"), inputs=[pb.Input(text="x")]), timeout=10
            ),
        }
        for rpc, call in calls.items():
            with pytest.raises(grpc.RpcError) as err:
                call()
            out[rpc] = err.value
    return out


def test_each_redis_refusal_reaches_callers_as_its_documented_status(cluster: Cluster) -> None:
    gateway, port = cluster.gateway(EMBEDSTREAM_REDIS_URL=_as_user(cluster, "gw"))
    cluster.worker()
    r = cluster.r

    def recovered() -> None:
        wait_until(lambda: answers(port, "fault", "back to normal", timeout=5), 20, what="calls to succeed again")

    r.config_set("maxmemory-policy", "noeviction")
    r.config_set("maxmemory", 1)  # full: every write that needs memory is refused
    try:
        full = _outcomes(port)
    finally:
        r.config_set("maxmemory", 0)
    for rpc, err in full.items():
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (rpc, err)
        assert "full" in (err.details() or "") and retry_after(err) >= 1.0, (rpc, err.details())
    recovered()

    # A replica (of a primary that is not there): READONLY, as after a failover.
    r.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))
    try:
        read_only = _outcomes(port)
    finally:
        r.execute_command("REPLICAOF", "NO", "ONE")
    for rpc, err in read_only.items():
        assert err.code() == grpc.StatusCode.UNAVAILABLE, (rpc, err)
    recovered()

    # The gateway's Redis user may no longer write (a wrong ACL): the operator's problem, said so.
    with _denied(cluster, "gw", "xadd", "hset"):
        denied = _outcomes(port)
    for rpc, err in denied.items():
        assert err.code() == grpc.StatusCode.UNAVAILABLE and "ACL" in (err.details() or ""), (rpc, err)

    recovered()
    assert "internal error" not in gateway.log()


#: Background loop -> (role, Redis commands whose denial makes each of its iterations fail).
LOOPS = {
    "heartbeat": ("worker", ("zadd",)),
    "reclaim": ("worker", ("xautoclaim",)),
    "read": ("worker", ("xreadgroup",)),
    "lease renewal": ("worker", ("xclaim",)),
    "reply reader": ("gateway", ("xread",)),
    "directory": ("gateway", ("zcount",)),
}


def test_every_background_loop_survives_its_failures_and_carries_on(cluster: Cluster) -> None:
    ports = {"gateway": metrics_port(), "worker": metrics_port()}
    users = {"gateway": "gw", "worker": "wk"}
    gateway, port = cluster.gateway(
        EMBEDSTREAM_REDIS_URL=_as_user(cluster, "gw"), EMBEDSTREAM_METRICS_PORT=str(ports["gateway"])
    )
    worker = cluster.worker(
        "deep", EMBEDSTREAM_REDIS_URL=_as_user(cluster, "wk"), EMBEDSTREAM_METRICS_PORT=str(ports["worker"])
    )

    def errors(role: str, loop: str) -> float:
        return scrape(ports[role]).get(f'embedstream_loop_errors_total{{loop="{loop}"}}', 0.0)

    with stub(port) as s:
        # A backlog (100 ms per 4 inputs), so the worker holds entries long enough to renew their leases.
        backlog = [
            s.Embed.future(pb.EmbedRequest(model="deep", inputs=[pb.Input(text=f"held {k} {i}") for i in range(4)]))
            for k in range(60)
        ]
        for loop, (role, commands) in LOOPS.items():
            before = errors(role, loop)
            with _denied(cluster, users[role], *commands):
                wait_until(
                    lambda loop=loop, role=role, before=before: errors(role, loop) > before,  # type: ignore[misc]
                    15,
                    what=f"the {loop} loop to fail",
                )
        results = [call.result(timeout=120) for call in backlog]
    assert all(len(r.embeddings) == 4 for r in results)
    # Every loop carried on: the worker beats again, the gateway answers, nobody restarted.
    beat = cluster.r.zscore(keys.workers("deep"), next(m for m in cluster.r.zrange(keys.workers("deep"), 0, -1)))
    wait_until(
        lambda: (cluster.r.zscore(keys.workers("deep"), cluster.r.zrange(keys.workers("deep"), 0, -1)[0]) or 0) > beat,
        5,
        what="a new heartbeat",
    )
    wait_until(lambda: answers(port, "deep", "still here", timeout=5), 20, what="calls to succeed")
    assert gateway.alive() and worker.alive()


def test_long_caller_strings_are_cut_short_in_errors(cluster: Cluster) -> None:
    _, port = cluster.gateway()
    cluster.worker()
    huge = "m" * 200_000
    with stub(port) as s, grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        cases: list[tuple[Callable[[], object], grpc.StatusCode]] = [
            (
                lambda: s.Embed(pb.EmbedRequest(model=huge, inputs=[pb.Input(text="x")]), timeout=10),
                grpc.StatusCode.NOT_FOUND,
            ),
            (
                lambda: s.Embed(
                    pb.EmbedRequest(model="fault", prompt_name=huge, inputs=[pb.Input(text="x")]), timeout=10
                ),
                grpc.StatusCode.INVALID_ARGUMENT,
            ),
            (
                lambda: jobs_pb2_grpc.JobsStub(channel).GetJob(jpb.GetJobRequest(id=huge), timeout=10),
                grpc.StatusCode.NOT_FOUND,
            ),
        ]
        for call, code in cases:
            with pytest.raises(grpc.RpcError) as err:
                call()
            assert err.value.code() == code, err.value
            assert len(err.value.details() or "") < 400 and "200000 characters" in (err.value.details() or "")
