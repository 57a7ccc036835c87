"""API keys: key files and settings refused naming the fault, every RPC needs a valid key (health and
reflection excepted), keys added and revoked on a running gateway."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from embedstream import apikeys, keys
from embedstream.errors import ConfigError
from embedstream.settings import Settings
from embedstream.v1 import embedder_pb2 as pb
from embedstream.v1 import embedder_pb2_grpc as pb_grpc
from tests.security.conftest import Redis, Secure
from tests.support.processes import base_env, cli, entries_added, wait_until
from tests.support.rpcs import JOB_RPCS, RPCS, SERVICES, UNAUTHENTICATED, bearer, inputs

DIGEST = "ab" * 32

CREDENTIALS = {
    "missing": (lambda s: [], "missing API key"),
    "malformed": (lambda s: [("authorization", f"Basic {s.keys['acme']}")], "malformed authorization"),
    "wrong": (lambda s: bearer(apikeys.new_key()), "invalid API key"),
    "revoked": (lambda s: bearer(s.keys["revoked"]), "invalid API key"),
}


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


def test_the_rpc_table_covers_every_rpc_of_the_protos() -> None:
    assert {m.name for service in SERVICES for m in service.methods} == set(RPCS)
    assert JOB_RPCS == ["CancelJob", "GetJob", "GetJobResults", "WatchJob"]


def footprint(admin: redis.Redis) -> tuple[int, int, int]:
    """What a call that got in would leave: queue entries, job chunks, job records."""
    return entries_added(admin, "debug"), entries_added(admin, "debug", keys.bulk), len(admin.keys(keys.job_meta("*")))


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
        except grpc.RpcError as exc:  # the debug model has no reranker, classifier or tokenizer: refused past auth
            assert rpc.startswith(("Rerank", "Classify", "Tokenize", "Decode")), exc.details()
            assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, exc.details()


def test_health_and_reflection_need_no_key(secure: Secure) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{secure.port}") as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="debug"), timeout=5)
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = list(reflect.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    assert status.status == health_pb2.HealthCheckResponse.SERVING
    assert "embedstream.v1.Jobs" in {s.name for s in replies[0].list_services_response.service}


def embed_ok(port: int, key: str) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            pb_grpc.EmbedderStub(channel).Embed(pb.EmbedRequest(inputs=inputs(1)), metadata=bearer(key), timeout=10)
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
