"""TLS for gRPC: the gateway's server credentials and a client's channel credentials."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc

from embedstream.errors import ConfigError

#: PEM given as a path or as the bytes themselves.
Pem = str | Path | bytes


def read_pem(value: Pem) -> bytes:
    """PEM bytes from a path, or ``value`` itself when it is bytes."""
    return value if isinstance(value, bytes) else Path(value).read_bytes()


def server_credentials(cert: str, key: str, client_ca: str) -> grpc.ServerCredentials | None:
    """The gateway's TLS credentials (None: plaintext); with ``client_ca``, client certificates are required."""
    if not cert:
        return None
    files = {"EMBEDSTREAM_TLS_CERT": cert, "EMBEDSTREAM_TLS_KEY": key, "EMBEDSTREAM_TLS_CLIENT_CA": client_ca}
    pems: dict[str, bytes | None] = {}
    for name, path in files.items():
        try:
            pems[name] = read_pem(path) if path else None
        except OSError as exc:
            raise ConfigError(f"{name} {path!r} cannot be read: {exc.strerror or exc}") from None
    ca = pems["EMBEDSTREAM_TLS_CLIENT_CA"]
    return grpc.ssl_server_credentials(
        [(pems["EMBEDSTREAM_TLS_KEY"], pems["EMBEDSTREAM_TLS_CERT"])],
        root_certificates=ca,
        require_client_auth=ca is not None,
    )


def server_ssl_context(cert: str, key: str, client_ca: str) -> ssl.SSLContext | None:
    """The same TLS for the gateway's HTTP port (None: plaintext); the same files, read once more."""
    if not cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
        if client_ca:
            context.load_verify_locations(client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"EMBEDSTREAM_TLS_CERT/KEY/CLIENT_CA cannot be loaded for HTTP: {exc}") from None
    return context


@dataclass(frozen=True, slots=True)
class TLS:
    """How a client speaks TLS to the gateway.

    ``ca``: the CA that signed the gateway's certificate (None: the system's roots);
    ``cert``/``key``: this client's certificate and key, for a gateway that requires
    them (mTLS); ``server_name``: the name to verify when it differs from the target's
    host (e.g. a probe dialling 127.0.0.1). Each PEM is a path or the bytes.
    """

    ca: Pem | None = None
    cert: Pem | None = None
    key: Pem | None = None
    server_name: str = ""

    def credentials(self) -> grpc.ChannelCredentials:
        """Channel credentials for ``grpc.secure_channel``."""
        if (self.cert is None) != (self.key is None):
            raise ValueError("TLS: cert and key go together (both or neither)")
        return grpc.ssl_channel_credentials(
            root_certificates=None if self.ca is None else read_pem(self.ca),
            private_key=None if self.key is None else read_pem(self.key),
            certificate_chain=None if self.cert is None else read_pem(self.cert),
        )

    def options(self) -> list[tuple[str, str]]:
        """Channel options that go with the credentials."""
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []
