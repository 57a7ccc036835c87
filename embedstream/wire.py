"""The queue wire format: msgpack maps with short keys and a version field.

Two pairs of functions turn jobs and replies into bytes and back; every
decoding failure becomes one error type, :class:`WireError`. Vectors travel as
raw bytes in the request's output type (``embedstream.vectors``), never as
lists of floats. Pickle is never used, so a forged entry can at worst fail to
decode.

A job that names ``outputs`` (dense, sparse, multi-vector: BGE-M3 gives all
three from one pass) gets a reply holding each in its own fields: dense rows in
``vectors``, sparse weights in ``sparse_weights`` beside ``indices``/``nnz``,
token matrices in ``multi`` with ``multi_rows``. A job without ``outputs`` gets
the model's primary output in the original layout (``vectors`` holds it all).
Entries and replies that name outputs carry version 4, so a worker or gateway
from before them refuses them instead of answering in the wrong layout.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import msgpack

from embedstream import mediawire, textwire
from embedstream.textwire import TokenList
from embedstream.vectors import OUTPUT_TYPES, OUTPUTS, row_bytes

VERSION = 1
#: Entries and replies that use chunking carry this version, so a worker or
#: gateway from before chunking refuses them (dead letter, error) instead of
#: silently truncating; version 1 payloads stay decodable.
VERSION_CHUNKS = 2
#: Entries and replies of the text operations (``embedstream.textwire``): a worker from
#: before them refuses such an entry instead of embedding what it was asked to tokenize.
VERSION_TEXT = 3
#: Entries and replies that name their outputs (``os``): a worker from before them refuses
#: such an entry instead of answering with the primary output alone. An entry's version is
#: that of the newest feature it uses.
VERSION_OUTPUTS = 4
#: Entries holding video or audio, and replies with segments, carry this version, so a worker
#: or gateway from before media (versions up to 4) refuses them instead of taking a video for
#: an image.
VERSION_MEDIA = 5
VERSIONS = (VERSION, VERSION_CHUNKS, VERSION_TEXT, VERSION_OUTPUTS, VERSION_MEDIA)
#: One input: a text, an encoded image, or token ids.
Item = textwire.Item
#: What ``Options.cache`` may be: "" (read and write), or the request's CacheMode otherwise.
CACHE_MODES = ("", "bypass", "refresh")


class WireError(ValueError):
    """A payload that is not a valid embedstream message of this version."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Options:
    """What a request asks of the model besides its inputs; every queue entry carries them."""

    normalize: bool | None = None
    truncate: bool = True
    #: "query", "document" or "": what the inputs are for.
    input_type: str = ""
    #: A prompt name the model declares, prepended to text inputs ("" = none).
    prompt: str = ""
    #: Matryoshka size (0 = all dimensions).
    dimensions: int = 0
    output_type: str = "float32"
    #: Rerank: the query every input (a document) is scored against.
    query: str = ""
    #: Sparse: also send each index's token string.
    return_tokens: bool = False
    #: Split over-long texts into chunks of tokens instead of cutting them.
    chunking: bool = False
    #: Chunk size in tokens, specials included (0 = the model's max input tokens).
    chunk_tokens: int = 0
    #: Tokens a chunk repeats from the one before (-1 = chunk size / 8).
    chunk_overlap: int = -1
    #: Return every chunk's vector and span instead of one pooled vector per input.
    chunk_vectors: bool = False
    #: How video and audio inputs are sampled, segmented and returned.
    media: mediawire.Media = mediawire.DEFAULT
    #: The outputs asked for ("dense", "sparse", "multi-vector"); () = the model's primary one, original layout.
    outputs: tuple[str, ...] = ()
    #: "embed" (a forward pass), "tokenize" or "decode" (the tokenizer only).
    kind: str = "embed"
    #: Which end of an over-long text is cut: "right" keeps the start, "left" the end.
    truncation_side: str = "right"
    #: Tokenize: add the model's special tokens; decode: keep them in the text.
    special_tokens: bool = True
    #: Classify: the function of the logits ("" = the model's own); also send the logits.
    function: str = ""
    return_logits: bool = False
    #: The embedding cache: "" reads and writes, "bypass" neither, "refresh" writes only.
    cache: str = ""
    #: Who may share cache entries (the tenant): part of every cache key.
    cache_scope: str = ""

    def to_job(
        self, id: str, reply_to: str, deadline_ms: int, enqueued_ms: int, inputs: list[Item], **rest: Any
    ) -> Job:
        """The queue entry for ``inputs`` with these options (``rest``: a chunk's job id and index, the trace)."""
        mine = {f.name: getattr(self, f.name) for f in fields(Options)}
        return Job(id, reply_to, deadline_ms, enqueued_ms, inputs, **rest, **mine)


@dataclass(frozen=True, slots=True)
class Job(Options):
    """One request as it waits in a model's queue: where to answer, by when, its inputs and its options."""

    id: str
    reply_to: str
    deadline_ms: int
    enqueued_ms: int
    #: Texts (str), encoded images, videos and audio (bytes) and token ids (list[int]), in request order.
    inputs: list[Item]
    #: One letter per input (``mediawire.KINDS``) when any input is video or audio; "" otherwise
    #: (then str is text, bytes an image, a list token ids).
    kinds: str = ""
    #: For a chunk of an async job: the job id and the chunk's index (else "" / -1).
    job_id: str = ""
    chunk: int = -1
    #: The W3C ``traceparent`` of the gateway span that queued it ("" = not traced).
    trace: str = ""


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


def encode_job(job: Job) -> bytes:
    """Serialize a job for XADD."""
    body: dict[str, Any] = {
        "v": VERSION,
        "i": job.id,
        "r": job.reply_to,
        "d": job.deadline_ms,
        "q": job.enqueued_ms,
        "t": job.inputs,
        "u": job.truncate,
    }
    if job.normalize is not None:
        body["n"] = job.normalize
    if job.job_id:
        body["j"] = job.job_id
        body["k"] = job.chunk
    if job.chunking:
        body.update(v=VERSION_CHUNKS, ch=True, cs=job.chunk_tokens, co=job.chunk_overlap, cv=job.chunk_vectors)
    optional = {
        "it": job.input_type,
        "pn": job.prompt,
        "dm": job.dimensions,
        "qy": job.query,
        "rt": job.return_tokens,
        "tr": job.trace,
        "ca": job.cache,
        "sc": job.cache_scope,
    }
    body.update((k, v) for k, v in optional.items() if v)
    if job.output_type != "float32":
        body["ot"] = job.output_type
    if text := textwire.job_body(job):
        body.update(text, v=VERSION_TEXT)
    if job.outputs:
        body.update(v=VERSION_OUTPUTS, os=list(job.outputs))
    if job.kinds:
        body.update(v=VERSION_MEDIA, mk=job.kinds, md=job.media.encode())
    return _pack(body)


def decode_job(data: bytes) -> Job:
    """Parse a job payload; any malformation raises :class:`WireError`."""
    body = _unpack(data)
    try:
        inputs = body["t"]
        if not isinstance(inputs, list) or not all(isinstance(t, str | bytes) or textwire.ids(t) for t in inputs):
            raise WireError("job inputs must be a list of strings, byte strings and token-id lists")
        normalize = body.get("n")
        if normalize is not None and not isinstance(normalize, bool):
            raise WireError("job normalize must be a bool")
        output_type = _typed(body.get("ot", "float32"), str, "ot")
        if output_type not in OUTPUT_TYPES:
            raise WireError(f"unknown output type {output_type!r}")
        cache = _typed(body.get("ca", ""), str, "ca")
        if cache not in CACHE_MODES:
            raise WireError(f"unknown cache mode {cache!r}")
        return Job(
            outputs=_outputs(body.get("os", [])),
            id=_typed(body["i"], str, "i"),
            reply_to=_typed(body["r"], str, "r"),
            deadline_ms=_typed(body["d"], int, "d"),
            enqueued_ms=_typed(body["q"], int, "q"),
            inputs=inputs,
            normalize=normalize,
            truncate=_typed(body.get("u", True), bool, "u"),
            job_id=_typed(body.get("j", ""), str, "j"),
            chunk=_typed(body.get("k", -1), int, "k"),
            chunking=_typed(body.get("ch", False), bool, "ch"),
            chunk_tokens=_typed(body.get("cs", 0), int, "cs"),
            chunk_overlap=_typed(body.get("co", -1), int, "co"),
            chunk_vectors=_typed(body.get("cv", False), bool, "cv"),
            input_type=_typed(body.get("it", ""), str, "it"),
            prompt=_typed(body.get("pn", ""), str, "pn"),
            dimensions=_typed(body.get("dm", 0), int, "dm"),
            output_type=output_type,
            query=_typed(body.get("qy", ""), str, "qy"),
            return_tokens=_typed(body.get("rt", False), bool, "rt"),
            trace=_typed(body.get("tr", ""), str, "tr"),
            **textwire.job_options(body),
            **mediawire.decode_options(body, len(inputs)),
            cache=cache,
            cache_scope=_typed(body.get("sc", ""), str, "sc"),
        )
    except ValueError as exc:
        raise WireError(str(exc)) from None
    except KeyError as exc:
        raise WireError(f"job lacks field {exc.args[0]!r}") from None


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
    return _pack(body)


def decode_reply(data: bytes) -> Reply:
    """Parse a reply payload; any malformation raises :class:`WireError`."""
    body = _unpack(data)
    try:
        reply = Reply(id=_typed(body["i"], str, "i"), worker=str(body.get("w", "")))
        if "e" in body:
            reply.error_code = _typed(body["e"], str, "e")
            reply.error_message = str(body.get("m", ""))
            return reply
        reply.vectors = _typed(body["x"], bytes, "x")
        reply.dimensions = _typed(body["dm"], int, "dm")
        reply.count = _typed(body["c"], int, "c")
        reply.tokens = int(body.get("tk", 0))
        reply.truncated = int(body.get("tr", 0))
        reply.queue_ms = float(body.get("qm", 0.0))
        reply.inference_ms = float(body.get("im", 0.0))
        reply.output_type = _typed(body.get("ot", "float32"), str, "ot")
        reply.rows = _int_list(body.get("rw"), "rw")
        reply.nnz = _int_list(body.get("nz"), "nz")
        reply.indices = _typed(body.get("ix", b""), bytes, "ix")
        strings = body.get("ts")
        if strings is not None and (not isinstance(strings, list) or not all(isinstance(t, str) for t in strings)):
            raise WireError("field 'ts' must be a list of strings")
        reply.token_strings = strings
        if "os" in body:
            reply.outputs = list(_outputs(body["os"]))
            reply.sparse_weights = _typed(body.get("sw", b""), bytes, "sw")
            reply.sparse_dimensions = _typed(body.get("sd", 0), int, "sd")
            reply.multi = _typed(body.get("mx", b""), bytes, "mx")
            reply.multi_rows = _int_list(body.get("mr"), "mr")
            reply.multi_dimensions = _typed(body.get("md", 0), int, "md")
        reply.chunks = _typed(body.get("cn", 0), int, "cn")
        reply.cached = _typed(body.get("cd", 0), int, "cd")
        reply.spans = _int_list(body.get("sp"), "sp")
        reply.segments = _int_list(body.get("sg"), "sg")
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
        _check_outputs(reply)
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


def _check_outputs(reply: Reply) -> None:
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


def _outputs(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(o in OUTPUTS for o in value) or len(set(value)) != len(value):
        raise WireError(f"field 'os' must list distinct outputs of {list(OUTPUTS)}")
    return tuple(value)


def _int_list(value: Any, key: str) -> list[int] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
        raise WireError(f"field {key!r} must be a list of non-negative integers")
    return value


def _pack(body: dict[str, Any]) -> bytes:
    data: bytes = msgpack.packb(body, use_bin_type=True)
    return data


def _unpack(data: bytes) -> dict[str, Any]:
    try:
        body = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types
        raise WireError(f"not msgpack: {type(exc).__name__}") from None
    if not isinstance(body, dict):
        raise WireError("payload is not a map")
    if body.get("v") not in VERSIONS:
        raise WireError(f"unsupported wire version {body.get('v')!r}")
    return body


def _typed(value: Any, kind: type, key: str) -> Any:
    # bool is an int subclass; a bool where an int belongs is still malformed.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise WireError(f"field {key!r} must be {kind.__name__}")
    return value
