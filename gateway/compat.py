"""The JSON shapes of the HTTP API: OpenAI's embeddings, models and errors, and the rerank shape
Cohere, Jina and TEI share, turned into the gRPC API's protobuf requests and back.

Requests become ``pb.EmbedRequest`` / ``pb.RerankRequest`` so that the gateway validates them
with the very functions gRPC calls use; responses are read from the ``pb`` responses the same
shaping code builds. Only JSON types are checked here; every limit and option is checked there.
Fields no client of ours knows (``input_type``, ``prompt_name``, ``normalize``, ``truncate``,
``output_type``, ``outputs``) are extra keys, which OpenAI's, Cohere's and Jina's clients ignore.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from embedstream.gateway import validation
from google.protobuf.json_format import MessageToDict

from embedstream import vectors
from embedstream.errors import EmbedstreamError, InvalidArgument
from embedstream.v1 import embedder_pb2 as pb

T = TypeVar("T")
ENCODING_FORMATS = ("float", "base64")
#: The enum values of the JSON strings, from the table validation reads them back with.
INPUT_TYPES = {name: value for value, name in validation.INPUT_TYPES.items() if name}
OUTPUT_TYPES = {name: value for value, name in validation.OUTPUT_TYPES.items()}
#: ``long_inputs`` in a JSON body; chunked inputs come back pooled, one vector per input.
LONG_INPUTS = {"truncate": pb.LONG_INPUTS_TRUNCATE, "chunk": pb.LONG_INPUTS_CHUNK, "error": pb.LONG_INPUTS_ERROR}
#: ``outputs`` in a JSON body: the names ListModels' ``capabilities.outputs`` values stand for.
OUTPUTS = {name: value for value, name in validation.VECTOR_KINDS.items()}
#: OpenAI's error ``type`` per HTTP status.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    504: "timeout_error",
}
#: The gRPC message's field path as the HTTP body names it: ``inputs[2].text`` is ``input[2]``.
_INPUTS_FIELD = re.compile(r"^inputs(\[\d+\])?(\.text)?")


def embed_request(body: dict[str, Any]) -> tuple[pb.EmbedRequest, str]:
    """OpenAI's embeddings request as an EmbedRequest, and its ``encoding_format``."""
    encoding_format = _text(body, "encoding_format", "float")
    if encoding_format not in ENCODING_FORMATS:
        raise InvalidArgument(f"encoding_format: {encoding_format!r} is not one of {list(ENCODING_FORMATS)}")
    _text(body, "user", "")  # accepted, as OpenAI does; it only labels the caller
    request = pb.EmbedRequest(
        model=_text(body, "model", ""),
        inputs=[pb.Input(text=t) for t in _inputs(body)],
        encoding=pb.VECTOR_ENCODING_PACKED,
        prompt_name=_text(body, "prompt_name", ""),
        output_type=_choice(body, "output_type", OUTPUT_TYPES, pb.OUTPUT_TYPE_FLOAT32),
        input_type=_choice(body, "input_type", INPUT_TYPES, pb.INPUT_TYPE_UNSPECIFIED),
    )
    for name in ("normalize", "truncate"):
        if (flag := _flag(body, name)) is not None:
            setattr(request, name, flag)
    if body.get("dimensions") is not None:
        request.dimensions = _count(body, "dimensions", 1)
    request.long_inputs = _choice(body, "long_inputs", LONG_INPUTS, pb.LONG_INPUTS_DEFAULT)
    for name in ("chunk_size_tokens", "chunk_overlap_tokens"):
        if body.get(name) is not None:
            setattr(request.chunking, name.removeprefix("chunk_"), _count(body, name, 0))
    request.outputs.extend(_outputs(body))
    return request, encoding_format


def _outputs(body: dict[str, Any]) -> list[pb.VectorKind.ValueType]:
    value = body.get("outputs")
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidArgument(f"outputs: must be a list of {list(OUTPUTS)}")
    for i, name in enumerate(value):
        if name not in OUTPUTS:
            raise InvalidArgument(f"outputs[{i}]: {name!r} is not one of {list(OUTPUTS)}")
    return [OUTPUTS[name] for name in value]


def _inputs(body: dict[str, Any]) -> list[str]:
    if "input" not in body:
        raise InvalidArgument("input: required (a string or a list of strings)")
    value = body["input"]
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise InvalidArgument("input: must be a string or a list of strings")
    if (value and all(isinstance(v, int) for v in value)) or any(isinstance(v, list) for v in value):
        raise InvalidArgument("input: token-id arrays are not served yet; send the text")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise InvalidArgument(f"input[{i}]: must be a string")
    return value


def embeddings_body(response: pb.EmbedResponse, encoding_format: str, outputs: Sequence[int] = ()) -> dict[str, Any]:
    """An EmbedResponse (packed vectors) as OpenAI's response: ``data``, ``model``, ``usage``.

    With ``outputs`` each item holds what was asked: ``embedding`` (dense), ``sparse_embedding``
    (``indices``, ``values``) and ``multi_vector`` (one vector per token, each a list or base64)."""
    output_type = validation.OUTPUT_TYPES[response.output_type]
    items: list[dict[str, Any]] = [{"object": "embedding", "index": i} for i in range(len(response.embeddings))]
    if not outputs or pb.VECTOR_KIND_DENSE in outputs:
        rows = [e.packed for e in response.embeddings]
        for item, v in zip(items, _vectors(rows, output_type, response.dimensions, encoding_format)):
            item["embedding"] = v
    for item, e in zip(items, response.embeddings):
        if pb.VECTOR_KIND_SPARSE in outputs:
            item["sparse_embedding"] = {"indices": list(e.sparse.indices), "values": list(e.sparse.values)}
        if pb.VECTOR_KIND_MULTI_VECTOR in outputs:
            width = vectors.row_bytes(output_type, response.multi_vector_dimensions)
            rows = [e.multi_vector.packed[k * width : (k + 1) * width] for k in range(e.multi_vector.rows)]
            item["multi_vector"] = _vectors(rows, output_type, response.multi_vector_dimensions, encoding_format)
    tokens = response.metadata.tokens
    return {
        "object": "list",
        "data": items,
        "model": response.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def _vectors(rows: list[bytes], output_type: str, dimensions: int, encoding_format: str) -> list[Any]:
    if encoding_format == "base64":
        # OpenAI's base64 is the vector's little-endian float32 bytes; other output types
        # give their own packed bytes (float16, int8, bits), as the gRPC API does.
        return [base64.b64encode(row).decode("ascii") for row in rows]
    if not rows:
        return []
    listed: list[Any] = vectors.unpack(b"".join(rows), output_type, dimensions).tolist()
    return listed


def rerank_request(body: dict[str, Any]) -> pb.RerankRequest:
    """The rerank request of Cohere, Jina and TEI: ``query``, ``documents`` (strings or
    ``{"text": ...}`` objects), ``top_n``, ``return_documents``."""
    if not isinstance(documents := body.get("documents"), list):
        raise InvalidArgument("documents: required, a list of strings")
    texts = []
    for i, document in enumerate(documents):
        if isinstance(document, dict):
            document = document.get("text")
        if not isinstance(document, str):
            raise InvalidArgument(f"documents[{i}]: must be a string or an object with a string 'text'")
        texts.append(document)
    request = pb.RerankRequest(
        model=_text(body, "model", ""),
        query=_text(body, "query", ""),
        documents=texts,
        top_n=_count(body, "top_n", 0) if body.get("top_n") is not None else 0,
        return_documents=bool(_flag(body, "return_documents")),
    )
    if (truncate := _flag(body, "truncate")) is not None:
        request.truncate = truncate
    return request


def rerank_body(response: pb.RerankResponse, return_documents: bool) -> dict[str, Any]:
    """A RerankResponse as Cohere's and Jina's response: results best first with ``relevance_score``."""
    results = []
    for result in response.results:
        item: dict[str, Any] = {"index": result.index, "relevance_score": result.score}
        if return_documents:
            item["document"] = {"text": result.document}
        results.append(item)
    tokens = response.metadata.tokens
    return {
        "id": response.request_id,
        "model": response.model,
        "results": results,
        "usage": {"total_tokens": tokens},
        "meta": {"billed_units": {"search_units": 1}},
    }


def model_body(info: pb.ModelInfo) -> dict[str, Any]:
    """One model as OpenAI lists it (``id``, ``object``, ``created``, ``owned_by``), plus what
    ListModels says about it."""
    extra = MessageToDict(info, preserving_proto_field_name=True)
    return {"id": info.name, "object": "model", "created": 0, "owned_by": "embedstream", **extra}


def error_body(exc: EmbedstreamError, status: int) -> dict[str, Any]:
    """OpenAI's error shape; ``param`` is the field the message names, ``code`` the gRPC status."""
    message = _INPUTS_FIELD.sub(lambda m: f"input{m.group(1) or ''}", exc.message)
    field, sep, _ = message.partition(": ")
    param = field if sep and re.fullmatch(r"[a-z_]+(\[\d+\])?(\.[a-z_]+)?", field) else None
    kind = ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": exc.code.value.lower()}}


def _text(body: dict[str, Any], name: str, default: str) -> str:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, str):
        raise InvalidArgument(f"{name}: must be a string")
    return value


def _flag(body: dict[str, Any], name: str) -> bool | None:
    value = body.get(name)
    if value is not None and not isinstance(value, bool):
        raise InvalidArgument(f"{name}: must be true or false")
    return value


def _count(body: dict[str, Any], name: str, least: int) -> int:
    value = body.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise InvalidArgument(f"{name}: must be an integer >= {least}")
    if value >= 2**32:
        raise InvalidArgument(f"{name}: {value} is too large")
    return value


def _choice(body: dict[str, Any], name: str, values: Mapping[str, T], default: T) -> T:
    value = _text(body, name, "")
    if not value:
        return default
    if value not in values:
        raise InvalidArgument(f"{name}: {value!r} is not one of {list(values)}")
    return values[value]
