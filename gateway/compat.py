"""The JSON shapes of the HTTP API: OpenAI's embeddings, models and errors, and the rerank shape
Cohere, Jina and TEI share, turned into the gRPC API's protobuf requests and back.

Requests become ``pb.EmbedRequest`` / ``pb.RerankRequest`` so that the gateway validates them
with the very functions gRPC calls use; responses are read from the ``pb`` responses the same
shaping code builds. Only JSON types are checked here; every limit and option is checked there.
Fields no client of ours knows (``input_type``, ``prompt_name``, ``normalize``, ``truncate``,
``truncation_side``, ``output_type``, ``outputs``) are extra keys, which OpenAI's, Cohere's and Jina's
clients ignore. ``input`` may be token ids, as OpenAI's API allows: an array of integers, or of such arrays.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from google.protobuf.json_format import MessageToDict, ParseDict, ParseError

from embedstream import vectors
from embedstream.errors import EmbedstreamError, InvalidArgument
from embedstream.gateway import optioncheck
from embedstream.v1 import embedder_pb2 as pb

T = TypeVar("T")
ENCODING_FORMATS = ("float", "base64")
#: The enum values of the JSON strings, from the table validation reads them back with.
INPUT_TYPES = {name: value for value, name in optioncheck.INPUT_TYPES.items() if name}
OUTPUT_TYPES = {name: value for value, name in optioncheck.OUTPUT_TYPES.items()}
#: ``long_inputs`` in a JSON body; chunked inputs come back pooled, one vector per input.
LONG_INPUTS = {"truncate": pb.LONG_INPUTS_TRUNCATE, "chunk": pb.LONG_INPUTS_CHUNK, "error": pb.LONG_INPUTS_ERROR}
#: ``cache`` in a JSON body (docs/cache.md).
CACHE = {"default": pb.CACHE_DEFAULT, "bypass": pb.CACHE_BYPASS, "refresh": pb.CACHE_REFRESH}
#: ``outputs`` in a JSON body: the names ListModels' ``capabilities.outputs`` values stand for.
OUTPUTS = {name: value for value, name in optioncheck.VECTOR_KINDS.items()}
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
#: The gRPC message's field path as an HTTP body names it: ``inputs[2].text`` is OpenAI's ``input[2]``,
#: ``inputs[2].video`` is ``input[2].video``.
_INPUTS_FIELD = re.compile(r"^inputs(\[\d+\])?(\.text|\.tokens|\.ids)?")
#: The multimodal form of an input (Jina's): an object with one of these keys, the bytes base64.
INPUT_KINDS = ("text", "image", "video", "audio")
#: ``truncation_side`` (TEI: ``truncation_direction``, also capitalised) in a JSON body.
SIDES = {"right": pb.TRUNCATION_SIDE_RIGHT, "left": pb.TRUNCATION_SIDE_LEFT}
_UINT32 = 2**32


def embed_request(body: dict[str, Any]) -> tuple[pb.EmbedRequest, str]:
    """OpenAI's embeddings request as an EmbedRequest, and its ``encoding_format``."""
    encoding_format = string(body, "encoding_format", "float")
    if encoding_format not in ENCODING_FORMATS:
        raise InvalidArgument(f"encoding_format: {encoding_format!r} is not one of {list(ENCODING_FORMATS)}")
    string(body, "user", "")  # accepted, as OpenAI does; it only labels the caller
    request = pb.EmbedRequest(
        model=string(body, "model", ""),
        inputs=_inputs(body),
        encoding=pb.VECTOR_ENCODING_PACKED,
        prompt_name=string(body, "prompt_name", ""),
        output_type=choice(body, "output_type", OUTPUT_TYPES, pb.OUTPUT_TYPE_FLOAT32),
        input_type=choice(body, "input_type", INPUT_TYPES, pb.INPUT_TYPE_UNSPECIFIED),
    )
    for name in ("normalize", "truncate"):
        if (value := flag(body, name)) is not None:
            setattr(request, name, value)
    if body.get("dimensions") is not None:
        request.dimensions = integer(body, "dimensions", 1)
    request.long_inputs = choice(body, "long_inputs", LONG_INPUTS, pb.LONG_INPUTS_DEFAULT)
    request.truncation_side = truncation_side(body)
    request.cache = choice(body, "cache", CACHE, pb.CACHE_DEFAULT)
    for name in ("chunk_size_tokens", "chunk_overlap_tokens"):
        if body.get(name) is not None:
            setattr(request.chunking, name.removeprefix("chunk_"), integer(body, name, 0))
    if body.get("media") is not None:
        try:
            ParseDict(body["media"], request.media)
        except (ParseError, TypeError, AttributeError) as exc:
            raise InvalidArgument(f"media: {exc}") from None
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


def _inputs(body: dict[str, Any]) -> list[pb.Input]:
    """OpenAI's ``input``: a string, a list of strings (or of Jina's objects), token ids, or token-id arrays."""
    if "input" not in body:
        raise InvalidArgument("input: required (a string, a list of strings, or token ids)")
    value = body["input"]
    if isinstance(value, str):
        return [pb.Input(text=value)]
    if not isinstance(value, list):
        raise InvalidArgument("input: must be a string, a list of strings, or token ids")
    if value and not isinstance(value[0], str | list | dict):  # one array of token ids
        return [pb.Input(tokens=pb.TokenIds(ids=token_ids(value, "input")))]
    if value and isinstance(value[0], list):
        out = []
        for i, item in enumerate(value):
            if not isinstance(item, list):
                raise InvalidArgument(f"input[{i}]: must be an array of token ids, as the other inputs are")
            out.append(pb.Input(tokens=pb.TokenIds(ids=token_ids(item, f"input[{i}]"))))
        return out
    return [_input(item, i) for i, item in enumerate(value)]


def _input(item: Any, i: int) -> pb.Input:
    """A string (a text), or ``{"text": ...}``, ``{"image" | "video" | "audio": "<base64>"}``."""
    if isinstance(item, str):
        return pb.Input(text=item)
    if not isinstance(item, dict) or len(item) != 1 or next(iter(item)) not in INPUT_KINDS:
        raise InvalidArgument(f"input[{i}]: must be a string, or an object with one of {', '.join(INPUT_KINDS)}")
    kind, data = next(iter(item.items()))
    if not isinstance(data, str):
        raise InvalidArgument(f"input[{i}].{kind}: must be a string" + ("" if kind == "text" else " (base64)"))
    if kind == "text":
        return pb.Input(text=data)
    try:
        decoded = base64.b64decode(data, validate=True)
    except ValueError:
        raise InvalidArgument(f"input[{i}].{kind}: not valid base64") from None
    out = pb.Input()
    setattr(out, kind, decoded)
    return out


def token_ids(value: list[Any], name: str) -> list[int]:
    """A JSON array of token ids (integers 0 .. 2**32 - 1)."""
    for i, item in enumerate(value):
        if isinstance(item, bool) or not isinstance(item, int) or not 0 <= item < _UINT32:
            raise InvalidArgument(f"{name}: token ids are integers from 0 to {_UINT32 - 1}; item {i} is {item!r}")
    return value


def truncation_side(body: dict[str, Any]) -> pb.TruncationSide.ValueType:
    """``truncation_side`` or TEI's ``truncation_direction``: right (the default) or left."""
    name = "truncation_direction" if body.get("truncation_side") is None else "truncation_side"
    value = string(body, name, "right")
    if value.lower() not in SIDES:
        raise InvalidArgument(f"{name}: {value!r} is not one of {list(SIDES)}")
    return SIDES[value.lower()]


def embeddings_body(response: pb.EmbedResponse, encoding_format: str, outputs: Sequence[int] = ()) -> dict[str, Any]:
    """An EmbedResponse (packed vectors) as OpenAI's response: ``data``, ``model``, ``usage``.

    With ``outputs`` each item holds what was asked: ``embedding`` (dense), ``sparse_embedding``
    (``indices``, ``values``) and ``multi_vector`` (one vector per token, each a list or base64)."""
    output_type = optioncheck.OUTPUT_TYPES[response.output_type]
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
    for item, e in zip(items, response.embeddings):
        if e.HasField("segment"):  # a request holding video or audio: where each vector lies
            item["segment"] = MessageToDict(
                e.segment, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
            )
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
        model=string(body, "model", ""),
        query=string(body, "query", ""),
        documents=texts,
        top_n=integer(body, "top_n", 0) if body.get("top_n") is not None else 0,
        return_documents=bool(flag(body, "return_documents")),
    )
    if (truncate := flag(body, "truncate")) is not None:
        request.truncate = truncate
    request.truncation_side = truncation_side(body)
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


def error_body(exc: EmbedstreamError, status: int, inputs: str = "input") -> dict[str, Any]:
    """OpenAI's error shape; ``param`` is the field the message names (the request's inputs are
    ``inputs`` in the body: OpenAI's ``input``, TEI's ``inputs`` or ``ids``), ``code`` the gRPC status."""
    message = _INPUTS_FIELD.sub(lambda m: f"{inputs}{m.group(1) or ''}", exc.message)
    field, sep, _ = message.partition(": ")
    param = field if sep and re.fullmatch(r"[a-z_]+(\[\d+\])?(\.[a-z_]+)?", field) else None
    kind = ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": exc.code.value.lower()}}


def string(body: dict[str, Any], name: str, default: str) -> str:
    """``body[name]``, a string, or ``default`` where absent or null."""
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, str):
        raise InvalidArgument(f"{name}: must be a string")
    return value


def flag(body: dict[str, Any], name: str) -> bool | None:
    """``body[name]``, true or false, or None where absent or null."""
    value = body.get(name)
    if value is not None and not isinstance(value, bool):
        raise InvalidArgument(f"{name}: must be true or false")
    return value


def integer(body: dict[str, Any], name: str, least: int) -> int:
    """``body[name]``, an integer from ``least`` to 2**32 - 1."""
    value = body.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise InvalidArgument(f"{name}: must be an integer >= {least}")
    if value >= 2**32:
        raise InvalidArgument(f"{name}: {value} is too large")
    return value


def choice(body: dict[str, Any], name: str, values: Mapping[str, T], default: T) -> T:
    """The value of the string ``body[name]`` names in ``values``, or ``default`` where absent."""
    value = string(body, name, "")
    if not value:
        return default
    if value not in values:
        raise InvalidArgument(f"{name}: {value!r} is not one of {list(values)}")
    return values[value]
