"""Redis refusing work, injected with real parts: maxmemory, a replica's read-only mode, ACL rules.

Every refusal reaches the caller as its documented status (never INTERNAL or UNKNOWN), every
background loop survives a failure of its own and carries on, and caller-supplied strings are
cut short in error messages.
"""

from __future__ import annotations

import re
import time
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
#: Lease renewal first: it renews only while the worker holds a backlog.
LOOPS = {
    "lease renewal": ("worker", ("xclaim",)),
    "heartbeat": ("worker", ("zadd",)),
    "reclaim": ("worker", ("xautoclaim",)),
    "read": ("worker", ("xreadgroup",)),
    "reply reader": ("gateway", ("xread",)),
    "directory": ("gateway", ("zcount",)),
}
#: Failures each loop must count under one injected fault: more than the one line it may log.
REPEATS = 3


class Loops:
    """A gateway and a ``deep`` worker, each as its own Redis user (``gw``, ``wk``) with its own
    metrics port, and what their background loops counted and logged."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.users = {"gateway": "gw", "worker": "wk"}
        self.ports = {"gateway": metrics_port(), "worker": metrics_port()}
        self.gateway, self.port = cluster.gateway(
            EMBEDSTREAM_REDIS_URL=_as_user(cluster, "gw"), EMBEDSTREAM_METRICS_PORT=str(self.ports["gateway"])
        )
        self.worker = cluster.worker(
            "deep", EMBEDSTREAM_REDIS_URL=_as_user(cluster, "wk"), EMBEDSTREAM_METRICS_PORT=str(self.ports["worker"])
        )
        self.procs = {"gateway": self.gateway, "worker": self.worker}

    def errors(self, loop: str) -> float:
        """Failed iterations ``loop`` counted (``embedstream_loop_errors_total``)."""
        return scrape(self.ports[self.role(loop)]).get(f'embedstream_loop_errors_total{{loop="{loop}"}}', 0.0)

    def logged(self, loop: str, what: str) -> int:
        """Lines ``loop`` logged saying ``what`` ("failed", "works again")."""
        return len(
            re.findall(rf"embedstream\.loops \d+: {re.escape(loop)} {what}\b", self.procs[self.role(loop)].log())
        )

    @staticmethod
    def role(loop: str) -> str:
        return LOOPS[loop][0]

    def fails(self, loop: str, before: float) -> None:
        """Until ``loop`` counted ``REPEATS`` failures since it had counted ``before``."""
        wait_until(lambda: self.errors(loop) >= before + REPEATS, 15, what=f"the {loop} loop to fail {REPEATS} times")

    def recovers(self, loop: str) -> None:
        """Until ``loop`` logged that it works again (after a failure it logged)."""
        wait_until(lambda: self.logged(loop, "works again") >= 1, 15, what=f"the {loop} loop to work again")

    def carried_on(self) -> None:
        """The worker beats again, the gateway answers, nobody restarted."""
        r = self.cluster.r
        name = r.zrange(keys.workers("deep"), 0, -1)[0]
        beat = r.zscore(keys.workers("deep"), name) or 0
        wait_until(lambda: (r.zscore(keys.workers("deep"), name) or 0) > beat, 5, what="a new heartbeat")
        wait_until(lambda: answers(self.port, "deep", "still here", timeout=5), 20, what="calls to succeed")
        assert self.gateway.alive() and self.worker.alive()


def test_every_background_loop_survives_its_failures_and_carries_on(cluster: Cluster) -> None:
    loops = Loops(cluster)
    with stub(loops.port) as s:
        # A backlog (100 ms per 4 inputs), so the worker holds entries long enough to renew their leases.
        backlog = [
            s.Embed.future(pb.EmbedRequest(model="deep", inputs=[pb.Input(text=f"held {k} {i}") for i in range(4)]))
            for k in range(100)
        ]
        for loop, (role, commands) in LOOPS.items():
            before = loops.errors(loop)
            with _denied(cluster, loops.users[role], *commands):
                loops.fails(loop, before)
            loops.recovers(loop)
        results = [call.result(timeout=120) for call in backlog]
    assert all(len(r.embeddings) == 4 for r in results)
    loops.carried_on()
    for loop in LOOPS:
        # Every failure counted, one line logged per 10 s at most (a denial lasts a few seconds).
        failed = loops.logged(loop, "failed")
        assert 1 <= failed < loops.errors(loop), (loop, failed, loops.errors(loop))


def test_background_loops_carry_on_through_killed_connections_and_paused_writes(cluster: Cluster) -> None:
    loops = Loops(cluster)
    r = cluster.r
    # Every connection of both processes killed, over and over (a proxy or a failover dropping
    # them): the blocking reads die mid-read.
    killed = ("read", "reply reader")
    before = {loop: loops.errors(loop) for loop in killed}
    end = time.monotonic() + 3
    while time.monotonic() < end:
        for user in loops.users.values():
            r.execute_command("CLIENT", "KILL", "USER", user)
        time.sleep(0.05)
    for loop in killed:
        loops.fails(loop, before[loop])
    loops.carried_on()

    # Writes paused past the clients' 1 s timeout (CLIENT PAUSE WRITE, as a failover's switch does).
    paused = ("heartbeat", "reclaim")
    before = {loop: loops.errors(loop) for loop in paused}
    r.execute_command("CLIENT", "PAUSE", 10_000, "WRITE")  # lifted once both counted enough
    try:
        for loop in paused:
            loops.fails(loop, before[loop])
    finally:
        r.execute_command("CLIENT", "UNPAUSE")
    loops.carried_on()


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
