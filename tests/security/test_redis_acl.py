"""Redis ACL users and TLS: gateway and worker run as the users `embedstream redis-acl` prints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from embedstream import acl, apikeys
from embedstream.client import Client
from embedstream.v1 import jobs_pb2 as jpb
from embedstream.workers.debug import debug_vectors
from tests.security.conftest import Redis, Secure
from tests.support import documents
from tests.support.certificates import Certs
from tests.support.corpora import SENTINEL
from tests.support.processes import base_env, cli, start_gateway, start_worker


def test_the_security_page_shows_the_acl_commands_the_code_uses() -> None:
    printed = cli("redis-acl")
    assert printed.returncode == 0 and printed.stdout == acl.render()
    assert acl.render() in documents.section("## Redis: TLS and ACL users", documents.DOCS / "security.md")


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
    # The embedding cache on: the words come back through the stream and the job, so the worker
    # runs the cache's lookup and store scripts too.
    worker_env = base_env(
        url["worker"],
        registry,
        EMBEDSTREAM_VISIBILITY_TIMEOUT_S="0.8",
        EMBEDSTREAM_CONSUMER_GC_S="0.5",
        EMBEDSTREAM_CACHE_BYTES=str(1 << 20),
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
