"""What the interceptors share about a method handler: which of gRPC's four call shapes it has."""

from __future__ import annotations

import grpc


def kind(handler: grpc.RpcMethodHandler) -> str:
    """``unary_unary``, ``unary_stream``, ``stream_unary`` or ``stream_stream``: the name of
    the handler's behaviour field (and of grpc's ``<kind>_rpc_method_handler``)."""
    requests = "stream" if handler.request_streaming else "unary"
    return f"{requests}_{'stream' if handler.response_streaming else 'unary'}"
