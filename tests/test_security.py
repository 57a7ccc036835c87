"""Security: API keys on every RPC, tenants, shared rate limits, TLS and mTLS, Redis ACL users and TLS, clean logs.

One module-scoped redis-server (with a TLS port when the binary supports it) and
one debug worker serve every gateway started here; each gateway is a real process.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import redis
from embedstream.gateway.ratelimit import Limit, RateLimiter
from embedstream.workers.model import debug_vectors
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from embedstream import acl, apikeys, keys
from embedstream.client import TLS, AsyncClient, Client, Retry
from embedstream.connections import connect
from embedstream.errors import ConfigError
from embedstream.redis_server import RedisServer, free_port
from embedstream.settings import Settings
from embedstream.v1 import embedder_pb2 as pb
from embedstream.v1 import embedder_pb2_grpc as pb_grpc
from embedstream.v1 import jobs_pb2 as jpb
from embedstream.v1 import jobs_pb2_grpc as jpb_grpc
from tests.support import ROOT
from tests.support.certificates import Certs, make
from tests.support.processes import Proc, base_env, entries_added, start_gateway, start_worker, wait_until

REGISTRY = """
default = "debug"

[models.debug]
family = "debug"
dimensions = 64

[models.orphan]
family = "debug"
dimensions = 8

[models.acl]
family = "debug"
dimensions = 16
"""
#: Input text that must never reach a log.
SENTINEL = "zebra-sentinel-7f3a: private words"
LIMITS = {"limited": " rate=5 burst=20", "trickle": " rate=50 burst=10", "hinted": " rate=20 burst=10"}
TENANTS = ("acme", "globex", "revoked", *LIMITS)
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED


def bearer(key: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {key}")]


def texts(n: int, prefix: str = "text") -> list[pb.Input]:
    return [pb.Input(text=f"{prefix} {i}") for i in range(n)]


# -- module fixtures -----------------------------------------------------------


@dataclass
class Redis:
    server: RedisServer
    admin: redis.Redis
    tls_port: int | None

    @property
    def url(self) -> str:
        return self.server.url


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def red(tmp_path_factory: pytest.TempPathFactory, certs: Certs) -> Iterator[Redis]:
    """A redis-server with a TLS port (client certificates required) beside its plain one."""
    tls_port: int | None = free_port()
    tls = {
        "tls-port": str(tls_port),
        "tls-cert-file": str(certs.server.cert),
        "tls-key-file": str(certs.server.key),
        "tls-ca-cert-file": str(certs.ca),
        "tls-auth-clients": "yes",
    }
    try:
        server = RedisServer(tmp_path_factory.mktemp("redis-tls"), appendonly=False, options=tls).start()
    except RuntimeError:  # built without TLS: the rediss:// test skips, saying so
        tls_port = None
        server = RedisServer(tmp_path_factory.mktemp("redis"), appendonly=False).start()
    admin = redis.Redis.from_url(server.url)
    yield Redis(server, admin, tls_port)
    admin.close()
    server.stop()


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("registry") / "models.toml"
    path.write_text(REGISTRY)
    return path


@pytest.fixture(scope="module")
def worker(red: Redis, registry: Path, log_dir: Path) -> Iterator[Proc]:
    proc = start_worker(base_env(red.url, registry), log_dir, "debug", red.admin)
    yield proc
    proc.stop()


@dataclass
class Secure:
    """A gateway that requires API keys, with jobs of tenant acme."""

    port: int
    env: dict[str, str]
    gateway: Proc
    keys_file: Path
    keys: dict[str, str]
    done_job: str
    open_job: str


@pytest.fixture(scope="module")
def secure(red: Redis, registry: Path, log_dir: Path, worker: Proc, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    tenant_keys = {tenant: apikeys.new_key() for tenant in TENANTS}
    keys_file = tmp_path_factory.mktemp("keys") / "api-keys"
    lines = [f"{t} {apikeys.digest(k)}{LIMITS.get(t, '')} name={t}" for t, k in tenant_keys.items()]
    keys_file.write_text("# tenant sha256 options\n" + "\n".join(lines) + "\n")
    env = base_env(red.url, registry, EMBEDSTREAM_API_KEYS_FILE=str(keys_file), EMBEDSTREAM_LOG_LEVEL="DEBUG")
    gateway, port = start_gateway(env, log_dir)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        jobs = jpb_grpc.JobsStub(channel)
        acme = bearer(tenant_keys["acme"])
        done = jobs.SubmitJob(jpb.SubmitJobRequest(spec=jpb.JobSpec(model="debug"), inputs=texts(3)), metadata=acme)
        list(jobs.WatchJob(jpb.GetJobRequest(id=done.id), metadata=acme, timeout=30))
        spec = jpb.JobSpec(model="orphan")  # no worker: stays QUEUED
        queued = jobs.SubmitJob(jpb.SubmitJobRequest(spec=spec, inputs=texts(2)), metadata=acme)
        # The key of tenant "revoked" works until its line leaves the file.
        embed = pb_grpc.EmbedderStub(channel).Embed
        embed(pb.EmbedRequest(inputs=texts(1)), metadata=bearer(tenant_keys["revoked"]), timeout=10)
        apikeys.remove(str(keys_file), lambda e: e.tenant != "revoked")
        wait_until(
            lambda: refused(lambda: embed(pb.EmbedRequest(inputs=texts(1)), metadata=bearer(tenant_keys["revoked"]))),
            3,
            what="the revoked key to be refused",
        )
    yield Secure(port, env, gateway, keys_file, tenant_keys, done.id, queued.id)
    gateway.stop()


@pytest.fixture(scope="module")
def second(secure: Secure, log_dir: Path) -> Iterator[tuple[Proc, int]]:
    """Another gateway with the same keys on the same Redis."""
    proc, port = start_gateway(secure.env, log_dir)
    yield proc, port
    proc.stop()


def refused(call: Callable[[], Any]) -> bool:
    try:
        call()
    except grpc.RpcError as exc:
        return bool(exc.code() == UNAUTHENTICATED)
    return False


# -- configuration ---------------------------------------------------------------

DIGEST = "ab" * 32


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("acme", "line 1: expected '<tenant> <sha256"),
        (f"# comment\n\nacme {DIGEST[:-1]}", "line 3: the key hash must be 64"),
        (f"9acme {DIGEST}", "line 1: tenant '9acme'"),
        (f"acme {DIGEST} rate=fast", "line 1: rate= must be a number"),
        (f"acme {DIGEST} burst=-1", "line 1: burst= must be a number"),
        (f"acme {DIGEST} colour=red", "line 1: unknown or repeated option 'colour'"),
    ],
)
def test_a_bad_key_entry_is_refused_naming_its_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        apikeys.parse(text, "keys.txt")


def test_key_entries_parse_and_a_tenant_has_one_limit() -> None:
    parsed = apikeys.parse(f"acme {DIGEST} rate=2.5 burst=9 name=ci ; globex {'cd' * 32}", "VAR", inline=True)
    assert parsed == [apikeys.Entry("acme", DIGEST, 2.5, 9, "ci"), apikeys.Entry("globex", "cd" * 32)]
    assert apikeys.parse(parsed[0].line(), "again") == parsed[:1]
    with pytest.raises(ConfigError, match="tenant 'acme' has entries with different"):
        apikeys.index([parsed[0], apikeys.Entry("acme", "cd" * 32, rate=3)])


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"EMBEDSTREAM_TLS_CERT": "c.pem"}, "EMBEDSTREAM_TLS_KEY"),
        ({"EMBEDSTREAM_TLS_CLIENT_CA": "ca.pem"}, "EMBEDSTREAM_TLS_CLIENT_CA"),
        ({"EMBEDSTREAM_RATE_LIMIT": "-1"}, "EMBEDSTREAM_RATE_LIMIT"),
    ],
)
def test_bad_security_settings_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


def test_a_gateway_with_an_unreadable_key_file_does_not_start(registry: Path) -> None:
    env = base_env("redis://127.0.0.1:1/0", registry, EMBEDSTREAM_API_KEYS_FILE="/nonexistent/keys")
    result = cli("gateway", "--port", "0", env=env)
    assert result.returncode == 2 and "EMBEDSTREAM_API_KEYS_FILE '/nonexistent/keys'" in result.stderr


# -- every RPC needs a key -------------------------------------------------------

Call = Callable[[grpc.Channel, list[tuple[str, str]], str], Any]


def _upload() -> Iterator[jpb.UploadJobRequest]:
    yield jpb.UploadJobRequest(header=jpb.JobSpec(model="debug"))
    yield jpb.UploadJobRequest(chunk=jpb.InputChunk(inputs=texts(2)))


#: Every RPC of Embedder and Jobs, run to completion with valid requests (a job id of acme's).
RPCS: dict[str, Call] = {
    "Embed": lambda ch, md, _: pb_grpc.EmbedderStub(ch).Embed(pb.EmbedRequest(inputs=texts(2)), metadata=md),
    "EmbedStream": lambda ch, md, _: list(
        pb_grpc.EmbedderStub(ch).EmbedStream(iter([pb.EmbedRequest(inputs=texts(2))]), metadata=md)
    ),
    "ListModels": lambda ch, md, _: pb_grpc.EmbedderStub(ch).ListModels(pb.ListModelsRequest(), metadata=md),
    "Rerank": lambda ch, md, _: pb_grpc.EmbedderStub(ch).Rerank(
        pb.RerankRequest(query="q", documents=["d"]), metadata=md
    ),
    "RerankStream": lambda ch, md, _: list(
        pb_grpc.EmbedderStub(ch).RerankStream(iter([pb.RerankRequest(query="q", documents=["d"])]), metadata=md)
    ),
    "SubmitJob": lambda ch, md, _: jpb_grpc.JobsStub(ch).SubmitJob(
        jpb.SubmitJobRequest(spec=jpb.JobSpec(model="debug"), inputs=texts(2)), metadata=md
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


def test_the_rpc_table_covers_every_rpc_of_the_protos() -> None:
    assert {m.name for service in SERVICES for m in service.methods} == set(RPCS)
    assert JOB_RPCS == ["CancelJob", "GetJob", "GetJobResults", "WatchJob"]


def footprint(admin: redis.Redis) -> tuple[int, int, int]:
    """What a call that got in would leave: queue entries, job chunks, job records."""
    try:
        bulk = int(admin.xinfo_stream(keys.bulk("debug"))["entries-added"])
    except redis.ResponseError:
        bulk = 0
    return entries_added(admin, "debug"), bulk, len(admin.keys(keys.job_meta("*")))


CREDENTIALS = {
    "missing": (lambda s: [], "missing API key"),
    "malformed": (lambda s: [("authorization", f"Basic {s.keys['acme']}")], "malformed authorization"),
    "wrong": (lambda s: bearer(apikeys.new_key()), "invalid API key"),
    "revoked": (lambda s: bearer(s.keys["revoked"]), "invalid API key"),
}


@pytest.mark.parametrize("rpc", sorted(RPCS))
@pytest.mark.parametrize("credential", sorted(CREDENTIALS))
def test_every_rpc_refuses_a_missing_malformed_wrong_or_revoked_key(
    secure: Secure, red: Redis, rpc: str, credential: str
) -> None:
    metadata_of, message = CREDENTIALS[credential]
    metadata = metadata_of(secure)
    before = footprint(red.admin)
    with grpc.insecure_channel(f"127.0.0.1:{secure.port}") as channel, pytest.raises(grpc.RpcError) as err:
        RPCS[rpc](channel, metadata, secure.done_job)
    assert err.value.code() == UNAUTHENTICATED, err.value.details()
    assert message in err.value.details()
    assert all(value not in err.value.details() for _, value in metadata)
    assert footprint(red.admin) == before  # nothing was enqueued or stored


@pytest.mark.parametrize("rpc", sorted(RPCS))
def test_a_valid_key_passes_every_rpc(secure: Secure, rpc: str) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{secure.port}") as channel:
        try:
            RPCS[rpc](channel, bearer(secure.keys["acme"]), secure.done_job)
        except grpc.RpcError as exc:  # the debug model is no reranker: refused past auth
            assert rpc.startswith("Rerank") and exc.code() == grpc.StatusCode.INVALID_ARGUMENT, exc.details()


def test_health_and_reflection_need_no_key(secure: Secure) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{secure.port}") as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="debug"), timeout=5)
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = list(reflect.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    assert status.status == health_pb2.HealthCheckResponse.SERVING
    assert "embedstream.v1.Jobs" in {s.name for s in replies[0].list_services_response.service}


# -- revocation and the CLI --------------------------------------------------------


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "embedstream", *args], env=env, capture_output=True, text=True, cwd=ROOT, timeout=60
    )


def embed_ok(port: int, key: str) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            pb_grpc.EmbedderStub(channel).Embed(pb.EmbedRequest(inputs=texts(1)), metadata=bearer(key), timeout=10)
        except grpc.RpcError as exc:
            assert exc.code() == UNAUTHENTICATED, exc.details()
            return False
    return True


def test_a_cli_key_works_without_restart_and_revoking_it_takes_seconds(secure: Secure) -> None:
    made = cli("api-key", "new", "--tenant", "acme", "--file", str(secure.keys_file), "--name", "cli")
    key = made.stdout.strip()
    assert made.returncode == 0 and key.startswith("es_") and len(key) > 40, made.stderr
    stored = secure.keys_file.read_text()
    assert key not in stored and f"acme {apikeys.digest(key)} name=cli" in stored
    wait_until(lambda: embed_ok(secure.port, key), 3, what="the new key to be accepted")
    gone = cli("api-key", "revoke", "--file", str(secure.keys_file), "--name", "cli")
    assert gone.returncode == 0, gone.stderr
    wait_until(lambda: not embed_ok(secure.port, key), 3, what="the revoked key to be refused")
    assert embed_ok(secure.port, secure.keys["acme"])


def test_sighup_rereads_the_key_file_even_when_its_stat_is_unchanged(secure: Secure) -> None:
    key = apikeys.new_key()
    apikeys.append(str(secure.keys_file), apikeys.Entry("acme", apikeys.digest(key), name="hup"))
    wait_until(lambda: embed_ok(secure.port, key), 3, what="the new key to be accepted")
    # Change one character of its hash in place: same size, same inode, old mtime.
    stat = os.stat(secure.keys_file)
    offset = secure.keys_file.read_bytes().index(apikeys.digest(key).encode())
    with open(secure.keys_file, "r+b") as f:
        f.seek(offset)
        f.write(b"0" if apikeys.digest(key)[0] != "0" else b"1")
    os.utime(secure.keys_file, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    time.sleep(1.2)  # past the gateway's once-a-second stat check, which sees no change
    assert embed_ok(secure.port, key)
    secure.gateway.signal(signal.SIGHUP)
    wait_until(lambda: not embed_ok(secure.port, key), 3, what="SIGHUP to revoke the key")


# -- tenants -------------------------------------------------------------------------


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
            job = stub.SubmitJob(jpb.SubmitJobRequest(spec=spec, inputs=texts(1)), metadata=bearer(secure.keys[tenant]))
        return str(job.id)

    acme, globex = submit("acme"), submit("globex")
    assert acme != globex and submit("acme") == acme and submit("globex") == globex


# -- rate limits -----------------------------------------------------------------------


def test_the_rate_limit_is_shared_by_two_gateways(secure: Secure, second: tuple[Proc, int], red: Redis) -> None:
    key = bearer(secure.keys["limited"])  # 5 inputs/s, burst 20
    with (
        grpc.insecure_channel(f"127.0.0.1:{secure.port}") as one,
        grpc.insecure_channel(f"127.0.0.1:{second[1]}") as two,
    ):
        pb_grpc.EmbedderStub(one).Embed(pb.EmbedRequest(inputs=texts(20)), metadata=key, timeout=10)
        before = entries_added(red.admin, "debug")
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as err:
            pb_grpc.EmbedderStub(two).Embed(pb.EmbedRequest(inputs=texts(20)), metadata=key, timeout=10)
        refused_in = time.monotonic() - started
        after = entries_added(red.admin, "debug")
        other = pb_grpc.EmbedderStub(two).Embed(
            pb.EmbedRequest(inputs=texts(20)), metadata=bearer(secure.keys["acme"]), timeout=10
        )
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    retry_ms = int(dict(err.value.trailing_metadata())["retry-after-ms"])
    assert 0 < retry_ms <= 4000 and f"retry in {retry_ms} ms" in err.value.details()
    assert "'limited'" in err.value.details() and "5 inputs/s (burst 20)" in err.value.details()
    assert refused_in < 2.0  # refused at once, not queued
    assert after == before  # nothing was enqueued
    assert len(other.embeddings) == 20  # another tenant's budget is its own
    assert 0 < red.admin.pttl(keys.rate("limited")) <= 8000  # state expires when the bucket refills


def test_a_stream_over_its_rate_slows_down_instead_of_failing(secure: Secure) -> None:
    requests = [pb.EmbedRequest(request_id=str(k), inputs=texts(10)) for k in range(4)]  # 50/s, burst 10
    started = time.monotonic()
    with grpc.insecure_channel(f"127.0.0.1:{secure.port}") as channel:
        stub = pb_grpc.EmbedderStub(channel)
        answers = list(stub.EmbedStream(iter(requests), metadata=bearer(secure.keys["trickle"]), timeout=30))
    assert [a.request_id for a in answers] == ["0", "1", "2", "3"]
    assert time.monotonic() - started >= 0.55  # 30 inputs past the burst at 50 inputs/s


def test_the_client_retries_a_rate_limited_call_after_its_hint(secure: Secure) -> None:
    hasty = Retry(attempts=2, initial_s=0.001, max_s=0.001)  # alone, far too soon for 20 inputs/s
    with Client(f"127.0.0.1:{secure.port}", model="debug", api_key=secure.keys["hinted"], retry=hasty) as client:
        client.embed(["spend"] * 10)  # the whole burst of 10
        assert client.embed(["wait"] * 10).shape == (10, 64)  # refused, then retried after retry-after-ms


def test_gcra_admits_a_burst_then_waits_and_lets_a_large_request_through_a_full_bucket(red: Redis) -> None:
    async def run() -> tuple[int, int, int, int, int]:
        client = connect(red.url, 1.5)
        limiter = RateLimiter(client, 1.5)
        limit = Limit(rate=10, burst=5)
        try:
            burst = await limiter.wait_ms("gcra-a", limit, 5)
            after = await limiter.wait_ms("gcra-a", limit, 1)
            large = await limiter.wait_ms("gcra-b", limit, 50)
            behind = await limiter.wait_ms("gcra-b", limit, 1)
            again = await limiter.wait_ms("gcra-b", limit, 60)
        finally:
            await client.aclose(close_connection_pool=True)
        return burst, after, large, behind, again

    burst, after, large, behind, again = asyncio.run(run())
    assert burst == 0 and 0 < after <= 100  # one input at 10/s: at most 100 ms away
    assert large == 0  # 50 inputs > burst 5, but the bucket was full
    assert 4000 < behind <= 4600 and 4500 < again <= 5000  # then it is paid off at 10/s
    assert 0 < red.admin.pttl(keys.rate("gcra-b")) <= 5001


# -- TLS and mTLS ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_gateways(  # type: ignore[no-untyped-def]
    red: Redis, registry: Path, certs: Certs, log_dir: Path, worker: Proc, secure: Secure
):
    """A TLS gateway on 0.0.0.0 without auth, and an mTLS one with inline API keys."""
    tls = {"EMBEDSTREAM_TLS_CERT": str(certs.server.cert), "EMBEDSTREAM_TLS_KEY": str(certs.server.key)}
    plain_tls = start_gateway(base_env(red.url, registry, EMBEDSTREAM_HOST="0.0.0.0", **tls), log_dir)
    inline = f"acme {apikeys.digest(secure.keys['acme'])}; globex {apikeys.digest(secure.keys['globex'])}"
    env = base_env(red.url, registry, EMBEDSTREAM_TLS_CLIENT_CA=str(certs.ca), EMBEDSTREAM_API_KEYS=inline, **tls)
    mutual = start_gateway(env, log_dir)
    yield {"tls": plain_tls, "mtls": mutual}
    for proc, _ in (plain_tls, mutual):
        proc.stop()


def check(port: int, *tls: str) -> int:
    return cli("check", "--port", str(port), "--service", "debug", *tls).returncode


def test_a_tls_gateway_serves_tls_and_refuses_plaintext(
    tls_gateways: dict[str, tuple[Proc, int]], certs: Certs
) -> None:
    proc, port = tls_gateways["tls"]
    with Client(f"127.0.0.1:{port}", model="debug", tls=TLS(ca=certs.ca), retry=Retry(attempts=1)) as client:
        assert np.allclose(client.embed(["hello"]), debug_vectors(["hello"], 64, [True]), atol=1e-6)
    with (
        Client(f"127.0.0.1:{port}", retry=Retry(attempts=1), timeout=5) as plaintext,
        pytest.raises(grpc.RpcError) as err,
    ):
        plaintext.embed(["hello"])
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert check(port, "--tls-ca", str(certs.ca)) == 0 and check(port) != 0
    assert "serving 0.0.0.0 without authentication" in proc.log()


def test_an_mtls_gateway_wants_a_client_certificate_from_its_ca(
    tls_gateways: dict[str, tuple[Proc, int]], certs: Certs, secure: Secure, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, port = tls_gateways["mtls"]
    target = f"127.0.0.1:{port}"
    mine = TLS(ca=certs.ca, cert=certs.client.cert, key=certs.client.key.read_bytes())

    async def embed_async() -> np.ndarray:
        async with AsyncClient(target, model="debug", tls=mine, api_key=secure.keys["globex"]) as client:
            return await client.embed(["hello"])

    assert asyncio.run(embed_async()).shape == (1, 64)
    monkeypatch.setenv("EMBEDSTREAM_API_KEY", secure.keys["acme"])
    with Client(target, model="debug", tls=mine) as client:  # the key comes from the environment
        assert client.embed(["hello"]).shape == (1, 64)
    for tls in (TLS(ca=certs.ca), TLS(ca=certs.ca, cert=certs.stranger.cert, key=certs.stranger.key)):
        with Client(target, model="debug", tls=tls, retry=Retry(attempts=1), timeout=5) as client:
            with pytest.raises(grpc.RpcError) as err:
                client.embed(["hello"])
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    with_cert = ("--tls-ca", str(certs.ca), "--tls-cert", str(certs.client.cert), "--tls-key", str(certs.client.key))
    assert check(port, *with_cert) == 0 and check(port, "--tls-ca", str(certs.ca)) != 0


# -- Redis: ACL users and TLS ------------------------------------------------------------


def test_the_readme_shows_the_acl_commands_the_code_uses() -> None:
    printed = cli("redis-acl")
    assert printed.returncode == 0 and printed.stdout == acl.render()
    assert acl.render() in (ROOT / "README.md").read_text()


@pytest.mark.parametrize("scheme", ["redis", "rediss"])
def test_gateway_and_worker_run_as_the_documented_acl_users(
    red: Redis, registry: Path, certs: Certs, log_dir: Path, secure: Secure, scheme: str
) -> None:
    if scheme == "rediss" and red.tls_port is None:
        pytest.skip("this redis-server was built without TLS")
    passwords = {role: apikeys.new_key() for role in acl.ROLES}
    for role, password in passwords.items():
        red.admin.execute_command(*acl.setuser(role, password))
    red.admin.acl_log_reset()
    if scheme == "redis":
        host, query = f"127.0.0.1:{red.server.port}", ""
    else:
        host = f"127.0.0.1:{red.tls_port}"
        query = f"?ssl_ca_certs={certs.ca}&ssl_certfile={certs.client.cert}&ssl_keyfile={certs.client.key}"
    url = {role: f"{scheme}://{acl.USERS[role]}:{pw}@{host}/0{query}" for role, pw in passwords.items()}
    # Rate limits and API keys on, so the gateway runs every script it has.
    gateway_env = base_env(
        url["gateway"],
        registry,
        EMBEDSTREAM_API_KEYS=f"acme {apikeys.digest(secure.keys['acme'])}",
        EMBEDSTREAM_RATE_LIMIT="1000",
    )
    worker_env = base_env(
        url["worker"], registry, EMBEDSTREAM_VISIBILITY_TIMEOUT_S="0.8", EMBEDSTREAM_CONSUMER_GC_S="0.5"
    )
    gateway, port = start_gateway(gateway_env, log_dir)
    acl_worker = start_worker(worker_env, log_dir, "acl", red.admin)
    try:
        with Client(f"127.0.0.1:{port}", model="acl", api_key=secure.keys["acme"]) as client:
            words = [f"{scheme} {SENTINEL} {i}" for i in range(40)]
            assert np.allclose(client.embed(words[:3]), debug_vectors(words[:3], 16, [True] * 3), atol=1e-6)
            streamed = np.concatenate(list(client.embed_stream(words, batch_size=8)))
            assert np.allclose(streamed, debug_vectors(words, 16, [True] * 40), atol=1e-6)
            job = client.submit_job(words, idempotency_key=f"acl-{scheme}")
            assert client.submit_job(words, idempotency_key=f"acl-{scheme}").id == job.id
            assert job.wait(timeout=30).state == jpb.JOB_STATE_SUCCEEDED
            rows = np.stack([v for _, v in job.results()])
            assert np.allclose(rows, debug_vectors(words, 16, [True] * 40), atol=1e-6)
            upload = client.upload_job(iter(words), model="orphan", chunk_size=16)
            assert upload.cancel().state == jpb.JOB_STATE_CANCELLED
    finally:
        acl_worker.stop()
        gateway.stop()
    denied = [entry for entry in red.admin.acl_log() if entry["username"] in acl.USERS.values()]
    assert denied == []
    for proc in (gateway, acl_worker):
        assert "NOPERM" not in proc.log() and "no permissions" not in proc.log()


# -- logs ----------------------------------------------------------------------------------


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
