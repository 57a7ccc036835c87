"""TLS and mutual TLS gateways, for the clients and for `embedstream check`."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import numpy as np
import pytest

from embedstream import apikeys
from embedstream.client import TLS, AsyncClient, Client, Retry
from embedstream.workers.debug import debug_vectors
from tests.security.conftest import Redis, Secure
from tests.support.certificates import Certs
from tests.support.processes import Proc, base_env, cli, start_gateway


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
