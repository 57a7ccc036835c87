"""The reply record of the queue wire format: a worker's answer to one entry, encoded and checked.

A worker writes a :class:`Reply` to the gateway's reply stream (or into a job's
stored chunks, ``embedstream.jobstore``); the gateway decodes it. Vectors travel as
raw bytes in the request's output type (``embedstream.vectors``), never as lists of
floats. A reply to an entry that named ``outputs`` (dense, sparse, multi-vector:
BGE-M3 gives all three from one pass) holds each in its own fields: dense rows in
``vectors``, sparse weights in ``sparse_weights`` beside ``indices``/``nnz``, token
matrices in ``multi`` with ``multi_rows``; otherwise ``vectors`` holds the model's
primary output in the original layout. Decoding ends by checking that every byte
count and list length adds up; any failure is a :class:`WireError`
(``embedstream.framing``, shared with the entries of ``embedstream.wire``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from embedstream import mediawire, textwire
from embedstream.framing import (
    VERSION,
    VERSION_CHUNKS,
    VERSION_MEDIA,
    VERSION_OUTPUTS,
    VERSION_TEXT,
    int_list,
    outputs_field,
    pack,
    typed,
    unpack,
)
from embedstream.framing import WireError as WireError
from embedstream.textwire import TokenList
from embedstream.vectors import OUTPUT_TYPES, row_bytes


@dataclass(slots=True)
class Reply:
    """A worker's answer to one job: vectors, or an error code and message."""

    id: str
    #: Dense: count x dimensions values; multi-vector: sum(rows) x dimensions;
    #: sparse: the float32 weights of every input's non-zero indices.
    vectors: bytes = b""
    dimensions: int = 0
    count: int = 0
    output_type: str = "float32"
    #: Multi-vector: vectors per input.
    rows: list[int] | None = None
    #: Sparse: uint32 indices (aligned with ``vectors``), non-zeros per input, tokens.
    indices: bytes = b""
    nnz: list[int] | None = None
    token_strings: list[str] | None = None
    tokens: int = 0
    truncated: int = 0
    #: Chunking: (input, token start, token end, char start, char end) per chunk,
    #: flattened, when the reply holds one vector per chunk (``count`` = chunks).
    spans: list[int] | None = None
    #: Chunks embedded (0 without chunking).
    chunks: int = 0
    #: Video and audio: ``mediawire.SEGMENT_FIELDS`` integers per vector (input, index, start and end in
    #: microseconds, pooled 0/1, frames), flattened; ``count`` = vectors.
    segments: list[int] | None = None
    #: Tokenize: each text's tokens; Decode: each sequence's text.
    token_lists: list[TokenList] | None = None
    texts: list[str] | None = None
    #: Classify: ``vectors`` holds count x labels scores; the labels in id order, and the
    #: logits (the same layout) where the job asked for them.
    labels: list[str] | None = None
    logits: bytes = b""
    #: Inputs answered from the embedding cache.
    cached: int = 0
    queue_ms: float = 0.0
    inference_ms: float = 0.0
    worker: str = ""
    error_code: str = ""
    error_message: str = ""
    #: Set when the job named its outputs: which ones this reply carries, each in its own fields.
    outputs: list[str] | None = None
    #: Sparse weights (float32, aligned with ``indices``) when ``outputs`` is set.
    sparse_weights: bytes = b""
    sparse_dimensions: int = 0
    #: Multi-vector rows (output type layout), vectors per input and row width, when ``outputs`` is set.
    multi: bytes = b""
    multi_rows: list[int] | None = None
    multi_dimensions: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when the reply carries vectors rather than an error."""
        return not self.error_code


def encode_reply(reply: Reply) -> bytes:
    """Serialize a reply for the gateway's reply stream."""
    body: dict[str, Any] = {"v": VERSION, "i": reply.id, "w": reply.worker}
    if reply.error_code:
        body["e"] = reply.error_code
        body["m"] = reply.error_message
    else:
        body.update(
            x=reply.vectors,
            dm=reply.dimensions,
            c=reply.count,
            tk=reply.tokens,
            tr=reply.truncated,
            qm=reply.queue_ms,
            im=reply.inference_ms,
        )
        if reply.output_type != "float32":
            body["ot"] = reply.output_type
        if reply.rows is not None:
            body["rw"] = reply.rows
        if reply.nnz is not None:
            body["ix"] = reply.indices
            body["nz"] = reply.nnz
        if reply.token_strings is not None:
            body["ts"] = reply.token_strings
        if reply.chunks:
            body.update(v=VERSION_CHUNKS, cn=reply.chunks)
        if reply.cached:
            body["cd"] = reply.cached
        if reply.spans is not None:
            body.update(v=VERSION_CHUNKS, sp=reply.spans)
        if text := textwire.reply_body(reply):
            body.update(text, v=VERSION_TEXT)
        if reply.outputs is not None:
            body.update(v=VERSION_OUTPUTS, os=reply.outputs, sw=reply.sparse_weights, sd=reply.sparse_dimensions)
            body.update(mx=reply.multi, md=reply.multi_dimensions)
            if reply.multi_rows is not None:
                body["mr"] = reply.multi_rows
        if reply.segments is not None:
            body.update(v=VERSION_MEDIA, sg=reply.segments)
    return pack(body)


def decode_reply(data: bytes) -> Reply:
    """Parse a reply payload; any malformation raises :class:`WireError`."""
    body = unpack(data)
    try:
        reply = Reply(id=typed(body["i"], str, "i"), worker=str(body.get("w", "")))
        if "e" in body:
            reply.error_code = typed(body["e"], str, "e")
            reply.error_message = str(body.get("m", ""))
            return reply
        reply.vectors = typed(body["x"], bytes, "x")
        reply.dimensions = typed(body["dm"], int, "dm")
        reply.count = typed(body["c"], int, "c")
        reply.tokens = int(body.get("tk", 0))
        reply.truncated = int(body.get("tr", 0))
        reply.queue_ms = float(body.get("qm", 0.0))
        reply.inference_ms = float(body.get("im", 0.0))
        reply.output_type = typed(body.get("ot", "float32"), str, "ot")
        reply.rows = int_list(body.get("rw"), "rw")
        reply.nnz = int_list(body.get("nz"), "nz")
        reply.indices = typed(body.get("ix", b""), bytes, "ix")
        strings = body.get("ts")
        if strings is not None and (not isinstance(strings, list) or not all(isinstance(t, str) for t in strings)):
            raise WireError("field 'ts' must be a list of strings")
        reply.token_strings = strings
        if "os" in body:
            reply.outputs = list(outputs_field(body["os"]))
            reply.sparse_weights = typed(body.get("sw", b""), bytes, "sw")
            reply.sparse_dimensions = typed(body.get("sd", 0), int, "sd")
            reply.multi = typed(body.get("mx", b""), bytes, "mx")
            reply.multi_rows = int_list(body.get("mr"), "mr")
            reply.multi_dimensions = typed(body.get("md", 0), int, "md")
        reply.chunks = typed(body.get("cn", 0), int, "cn")
        reply.cached = typed(body.get("cd", 0), int, "cd")
        reply.spans = int_list(body.get("sp"), "sp")
        reply.segments = int_list(body.get("sg"), "sg")
        for name, value in textwire.reply_fields(body).items():
            setattr(reply, name, value)
    except ValueError as exc:
        raise WireError(str(exc)) from None
    except KeyError as exc:
        raise WireError(f"reply lacks field {exc.args[0]!r}") from None
    _check_sizes(reply)
    return reply


def _check_sizes(reply: Reply) -> None:
    if reply.output_type not in OUTPUT_TYPES:
        raise WireError(f"unknown output type {reply.output_type!r}")
    if reply.spans is not None and len(reply.spans) != 5 * reply.count:
        raise WireError("reply spans do not match count")
    if reply.segments is not None and len(reply.segments) != mediawire.SEGMENT_FIELDS * reply.count:
        raise WireError("reply segments do not match count")
    if problem := textwire.size_problem(reply):
        raise WireError(problem)
    if reply.outputs is not None:
        _checkoutputs_field(reply)
        return
    if reply.nnz is not None:
        total = sum(reply.nnz)
        if len(reply.nnz) != reply.count or len(reply.indices) != 4 * total or len(reply.vectors) != 4 * total:
            raise WireError("reply sparse sizes do not match")
        if reply.token_strings is not None and len(reply.token_strings) != total:
            raise WireError("reply token strings do not match the indices")
        return
    rows = reply.count
    if reply.rows is not None:
        if len(reply.rows) != reply.count:
            raise WireError("reply rows do not match count")
        rows = sum(reply.rows)
    if len(reply.vectors) != rows * row_bytes(reply.output_type, reply.dimensions):
        raise WireError("reply vector bytes do not match count x dimensions")


def _checkoutputs_field(reply: Reply) -> None:
    """Sizes of a reply that carries named outputs, each in its own fields."""
    asked = set(reply.outputs or ())
    dense = reply.count * row_bytes(reply.output_type, reply.dimensions) if "dense" in asked else 0
    if len(reply.vectors) != dense:
        raise WireError("reply dense bytes do not match count x dimensions")
    if "sparse" in asked:
        total = sum(reply.nnz or []) if reply.nnz is not None and len(reply.nnz) == reply.count else -1
        if total < 0 or len(reply.indices) != 4 * total or len(reply.sparse_weights) != 4 * total:
            raise WireError("reply sparse sizes do not match")
        if reply.token_strings is not None and len(reply.token_strings) != total:
            raise WireError("reply token strings do not match the indices")
    elif reply.nnz is not None or reply.indices or reply.sparse_weights:
        raise WireError("reply carries a sparse output nobody asked for")
    rows = reply.multi_rows
    if "multi-vector" in asked:
        if rows is None or len(rows) != reply.count:
            raise WireError("reply multi-vector rows do not match count")
        if len(reply.multi) != sum(rows) * row_bytes(reply.output_type, reply.multi_dimensions):
            raise WireError("reply multi-vector bytes do not match rows x dimensions")
    elif rows is not None or reply.multi:
        raise WireError("reply carries a multi-vector output nobody asked for")
