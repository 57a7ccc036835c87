"""Security fixtures: one redis-server (with a TLS port when the binary supports it) and one debug
worker serve every gateway started in tests/security/; each gateway is a real process. The fixtures
are package-scoped: started once for every file here, stopped after the last."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import redis

from embedstream import apikeys
from embedstream.redis_server import RedisServer, free_port
from embedstream.v1 import embedder_pb2 as pb
from embedstream.v1 import embedder_pb2_grpc as pb_grpc
from embedstream.v1 import jobs_pb2 as jpb
from embedstream.v1 import jobs_pb2_grpc as jpb_grpc
from tests.support.certificates import Certs, make
from tests.support.processes import Proc, base_env, start_gateway, start_worker, wait_until
from tests.support.rpcs import bearer, inputs, refused

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
LIMITS = {"limited": " rate=5 burst=20", "trickle": " rate=50 burst=10", "hinted": " rate=20 burst=10"}
TENANTS = ("acme", "globex", "revoked", *LIMITS)


@dataclass
class Redis:
    server: RedisServer
    admin: redis.Redis
    tls_port: int | None

    @property
    def url(self) -> str:
        return self.server.url


@pytest.fixture(scope="package")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="package")
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


@pytest.fixture(scope="package")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("registry") / "models.toml"
    path.write_text(REGISTRY)
    return path


@pytest.fixture(scope="package")
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


@pytest.fixture(scope="package")
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
        done = jobs.SubmitJob(jpb.SubmitJobRequest(spec=jpb.JobSpec(model="debug"), inputs=inputs(3)), metadata=acme)
        list(jobs.WatchJob(jpb.GetJobRequest(id=done.id), metadata=acme, timeout=30))
        spec = jpb.JobSpec(model="orphan")  # no worker: stays QUEUED
        queued = jobs.SubmitJob(jpb.SubmitJobRequest(spec=spec, inputs=inputs(2)), metadata=acme)
        # The key of tenant "revoked" works until its line leaves the file.
        embed = pb_grpc.EmbedderStub(channel).Embed
        embed(pb.EmbedRequest(inputs=inputs(1)), metadata=bearer(tenant_keys["revoked"]), timeout=10)
        apikeys.remove(str(keys_file), lambda e: e.tenant != "revoked")
        wait_until(
            lambda: refused(lambda: embed(pb.EmbedRequest(inputs=inputs(1)), metadata=bearer(tenant_keys["revoked"]))),
            3,
            what="the revoked key to be refused",
        )
    yield Secure(port, env, gateway, keys_file, tenant_keys, done.id, queued.id)
    gateway.stop()


@pytest.fixture(scope="package")
def second(secure: Secure, log_dir: Path) -> Iterator[tuple[Proc, int]]:
    """Another gateway with the same keys on the same Redis."""
    proc, port = start_gateway(secure.env, log_dir)
    yield proc, port
    proc.stop()
