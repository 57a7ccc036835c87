"""`embedstream call`: grpcurl's JSON calling style for embedstream's own RPCs, with nothing to install.

``embedstream call -d '{"inputs": [{"text": "hi"}]}' localhost:50051 embedstream.v1.Embedder/Embed``
sends the JSON as the request and prints each response as JSON, as
``grpcurl -plaintext -d ...`` does. ``-d @`` reads one or more JSON messages from stdin (so
large images need no command line); ``-d @FILE`` reads them from a file. Streaming RPCs send
every message given and print every response. Only the services compiled into
``embedstream.v1`` (Embedder, Jobs) and gRPC health are known; grpcurl itself reaches any
service through reflection.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from embedstream.tls import TLS


@dataclass
class Call:
    """One `embedstream call`: where, which method, what data, which headers."""

    target: str
    method: str
    data: str = ""
    headers: tuple[str, ...] = ()
    tls: TLS | None = None
    timeout_s: float = 60.0


def method_descriptor(name: str) -> MethodDescriptor:
    """``pkg.Service/Method`` (or ``pkg.Service.Method``) as its descriptor; ValueError names what is known."""
    from grpc_health.v1 import health_pb2

    from embedstream.v1 import embedder_pb2, jobs_pb2

    service, _, method = name.replace("/", ".").rpartition(".")
    services: dict[str, ServiceDescriptor] = {}
    for module in (embedder_pb2, jobs_pb2, health_pb2):
        for svc in module.DESCRIPTOR.services_by_name.values():
            services[svc.full_name] = svc
    if service not in services or method not in services[service].methods_by_name:
        known = sorted(f"{s}/{m}" for s, d in services.items() for m in d.methods_by_name)
        raise ValueError(f"unknown method {name!r}; known: {', '.join(known)}")
    found: MethodDescriptor = services[service].methods_by_name[method]
    return found


def messages(data: str, kind: type[Message]) -> list[Message]:
    """The request messages in ``data``: JSON objects one after another ('' is one empty message)."""
    if data.startswith("@"):
        data = sys.stdin.read() if data == "@" else open(data[1:], encoding="utf-8").read()
    decoder, out, pos = json.JSONDecoder(), [], 0
    while True:
        while pos < len(data) and data[pos].isspace():
            pos += 1
        if pos == len(data):
            break
        try:
            value, pos = decoder.raw_decode(data, pos)
        except json.JSONDecodeError as exc:
            raise ValueError(f"-d: not JSON at character {exc.pos}: {exc.msg}") from None
        try:
            out.append(json_format.ParseDict(value, kind()))
        except json_format.ParseError as exc:
            raise ValueError(f"-d: {exc}") from None
    return out or [kind()]


def run(call: Call) -> int:
    """Make the call and print every response as JSON; returns the exit code."""
    descriptor = method_descriptor(call.method)
    request_kind = GetMessageClass(descriptor.input_type)
    response_kind = GetMessageClass(descriptor.output_type)
    requests = messages(call.data, request_kind)
    if not descriptor.client_streaming and len(requests) > 1:
        raise ValueError(f"-d: {call.method} takes one request message, not {len(requests)}")
    metadata = [_header(h) for h in call.headers]
    path = f"/{descriptor.containing_service.full_name}/{descriptor.name}"
    if call.tls is None:
        channel = grpc.insecure_channel(call.target)
    else:
        channel = grpc.secure_channel(call.target, call.tls.credentials(), options=call.tls.options())
    shape = ("stream" if descriptor.client_streaming else "unary") + (
        "_stream" if descriptor.server_streaming else "_unary"
    )
    with channel:
        rpc = getattr(channel, shape)(
            path, request_serializer=lambda m: m.SerializeToString(), response_deserializer=response_kind.FromString
        )
        arg: Any = iter(requests) if descriptor.client_streaming else requests[0]
        answer = rpc(arg, metadata=metadata, timeout=call.timeout_s)
        responses: Iterator[Message] = answer if descriptor.server_streaming else iter([answer])
        for response in responses:
            print(json_format.MessageToJson(response, indent=2), flush=True)
    return 0


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise ValueError(f"-H {text!r}: a header is 'name: value'")
    return name.strip().lower(), value.strip()
