"""The queue wire format's entry: one request as a msgpack map with short keys and a version field.

:class:`Options` is what a request asks of the model, :class:`Job` the queue entry that
carries them with its inputs; ``encode_job`` and ``decode_job`` turn it into bytes and
back, every decoding failure one error type, :class:`WireError`. The frame (versions,
fenced msgpack, typed fields) is ``embedstream.framing``; the worker's answer is
``embedstream.replywire``; text operations and media add their keys through
``embedstream.textwire`` and ``embedstream.mediawire``. An entry carries the version of
the newest feature it uses, so a worker from before that feature refuses it instead of
answering wrongly.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from embedstream import mediawire, textwire
from embedstream.framing import (
    VERSION,
    VERSION_CHUNKS,
    VERSION_MEDIA,
    VERSION_OUTPUTS,
    VERSION_TEXT,
    outputs_field,
    pack,
    typed,
    unpack,
)
from embedstream.framing import WireError as WireError

# The reply record's home is embedstream.replywire; these two names stay reachable as wire.X
# for the gateway modules (dispatch, embedder, replies) that still spell them so.
from embedstream.replywire import Reply as Reply
from embedstream.replywire import decode_reply as decode_reply
from embedstream.vectors import OUTPUT_TYPES

#: One input: a text, an encoded image, or token ids.
Item = textwire.Item
#: What ``Options.cache`` may be: "" (read and write), or the request's CacheMode otherwise.
CACHE_MODES = ("", "bypass", "refresh")


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
    return pack(body)


def decode_job(data: bytes) -> Job:
    """Parse a job payload; any malformation raises :class:`WireError`."""
    body = unpack(data)
    try:
        inputs = body["t"]
        if not isinstance(inputs, list) or not all(isinstance(t, str | bytes) or textwire.ids(t) for t in inputs):
            raise WireError("job inputs must be a list of strings, byte strings and token-id lists")
        normalize = body.get("n")
        if normalize is not None and not isinstance(normalize, bool):
            raise WireError("job normalize must be a bool")
        output_type = typed(body.get("ot", "float32"), str, "ot")
        if output_type not in OUTPUT_TYPES:
            raise WireError(f"unknown output type {output_type!r}")
        cache = typed(body.get("ca", ""), str, "ca")
        if cache not in CACHE_MODES:
            raise WireError(f"unknown cache mode {cache!r}")
        return Job(
            outputs=outputs_field(body.get("os", [])),
            id=typed(body["i"], str, "i"),
            reply_to=typed(body["r"], str, "r"),
            deadline_ms=typed(body["d"], int, "d"),
            enqueued_ms=typed(body["q"], int, "q"),
            inputs=inputs,
            normalize=normalize,
            truncate=typed(body.get("u", True), bool, "u"),
            job_id=typed(body.get("j", ""), str, "j"),
            chunk=typed(body.get("k", -1), int, "k"),
            chunking=typed(body.get("ch", False), bool, "ch"),
            chunk_tokens=typed(body.get("cs", 0), int, "cs"),
            chunk_overlap=typed(body.get("co", -1), int, "co"),
            chunk_vectors=typed(body.get("cv", False), bool, "cv"),
            input_type=typed(body.get("it", ""), str, "it"),
            prompt=typed(body.get("pn", ""), str, "pn"),
            dimensions=typed(body.get("dm", 0), int, "dm"),
            output_type=output_type,
            query=typed(body.get("qy", ""), str, "qy"),
            return_tokens=typed(body.get("rt", False), bool, "rt"),
            trace=typed(body.get("tr", ""), str, "tr"),
            **textwire.job_options(body),
            **mediawire.decode_options(body, len(inputs)),
            cache=cache,
            cache_scope=typed(body.get("sc", ""), str, "sc"),
        )
    except ValueError as exc:
        raise WireError(str(exc)) from None
    except KeyError as exc:
        raise WireError(f"job lacks field {exc.args[0]!r}") from None
