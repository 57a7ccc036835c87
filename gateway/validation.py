"""Checks every request before anything touches Redis; errors name the field.

Options (input type, prompt, Matryoshka dimensions, output type, ...) are
checked against what the model's family and registry entry support, the same
way for Embed, EmbedStream, Rerank and jobs. :func:`validate_inputs` only lets
images through to image models; :func:`verify_images` then checks each one off
the event loop, header first (format, bytes, pixels: cheap, so a decompression
bomb never costs a decode), then one cheap decode that refuses truncated or
corrupt data. Video and audio inputs go only to models that take them
(the registry's modalities); ``gateway/mediacheck.py`` checks each clip.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from embedstream.gateway import mediacheck, tokens
from embedstream.gateway.auth import current_tenant
from embedstream.gateway.directory import Directory
from embedstream.gateway.dispatch import Options, Request

from embedstream import images, wire
from embedstream.errors import InvalidArgument, TooLarge, clip
from embedstream.registry import ModelSpec, Registry
from embedstream.settings import Settings
from embedstream.v1 import embedder_pb2 as pb

INPUT_TYPES = {pb.INPUT_TYPE_UNSPECIFIED: "", pb.INPUT_TYPE_QUERY: "query", pb.INPUT_TYPE_DOCUMENT: "document"}
OUTPUT_TYPES = {
    pb.OUTPUT_TYPE_FLOAT32: "float32",
    pb.OUTPUT_TYPE_FLOAT16: "float16",
    pb.OUTPUT_TYPE_INT8: "int8",
    pb.OUTPUT_TYPE_UINT8: "uint8",
    pb.OUTPUT_TYPE_BINARY: "binary",
    pb.OUTPUT_TYPE_UBINARY: "ubinary",
}
VECTOR_KINDS = {
    pb.VECTOR_KIND_DENSE: "dense",
    pb.VECTOR_KIND_SPARSE: "sparse",
    pb.VECTOR_KIND_MULTI_VECTOR: "multi-vector",
}

#: The request's CacheMode as the queue entry carries it (``wire.CACHE_MODES``).
CACHE_MODES = {pb.CACHE_DEFAULT: "", pb.CACHE_BYPASS: "bypass", pb.CACHE_REFRESH: "refresh"}

#: Families whose texts may be chunked (long_inputs LONG_INPUTS_CHUNK).
CHUNKED_FAMILIES = ("text-dense", "sparse", "multi-vector", "debug")
#: The smallest chunk, in tokens.
MIN_CHUNK_TOKENS = 8


def validate(req: pb.EmbedRequest, registry: Registry, settings: Settings, directory: Directory) -> Request:
    """A ready-to-enqueue request, or :class:`InvalidArgument` / ``NotFound``."""
    spec = registry.resolve(req.model)
    refuse_scorers(spec, "model: ")
    count(len(req.inputs), settings, "inputs")
    if req.encoding not in pb.VectorEncoding.values():
        raise InvalidArgument(f"encoding: unknown value {req.encoding}")
    options = check_options(req, spec, directory)
    if req.encoding == pb.VECTOR_ENCODING_PACKED_F32LE and options.output_type != "float32":
        raise InvalidArgument(
            f"encoding: VECTOR_ENCODING_PACKED_F32LE holds float32 only; use VECTOR_ENCODING_PACKED "
            f"for output_type {options.output_type}"
        )
    inputs = validate_inputs(req.inputs, spec, settings, directory, options.truncate)
    check_token_inputs(inputs, req.prompt_name, options)
    check_chunks(inputs, options, settings)
    return Request(spec, inputs, options, mediacheck.kinds_of(req.inputs))


def check_token_inputs(inputs: Sequence[wire.Item], prompt_name: str, options: Options, prefix: str = "") -> None:
    """Token ids are embedded as given: a prompt named for them, or chunking, cannot apply."""
    if not any(isinstance(item, list) for item in inputs):
        return
    if prompt_name:
        raise InvalidArgument(
            f"{prefix}prompt_name: prompts are prepended to texts; token-id inputs are embedded as given "
            "(include the prompt's tokens in them)"
        )
    if options.chunking:
        raise InvalidArgument(f"{prefix}long_inputs: token-id inputs are never cut or chunked; send text to chunk")


def refuse_scorers(spec: ModelSpec, where: str) -> None:
    """Rerank and classify models give scores, not embeddings: refused by Embed and jobs."""
    if spec.family in ("rerank", "classify"):
        call = "Rerank or RerankStream" if spec.family == "rerank" else "Classify or ClassifyStream"
        raise InvalidArgument(f"{where}{spec.name!r} is a {spec.family} model; call {call}")


def validate_rerank(req: pb.RerankRequest, registry: Registry, settings: Settings, directory: Directory) -> Request:
    """A ready-to-enqueue rerank request: the documents are the inputs, the query rides along."""
    spec = registry.resolve(req.model)
    if spec.family != "rerank":
        raise InvalidArgument(f"model: {spec.name!r} is a {spec.family} model; Rerank needs a rerank model")
    count(len(req.documents), settings, "documents")
    truncate = req.truncate if req.HasField("truncate") else True
    side = tokens.side(req.truncation_side, spec, directory)
    query = check_text(req.query, "query", spec, settings, directory, truncate)
    docs = [check_text(d, f"documents[{i}]", spec, settings, directory, truncate) for i, d in enumerate(req.documents)]
    # No field chooses the cache for a rerank call, so a ranking always runs the model.
    return Request(spec, list(docs), Options(truncate=truncate, query=query, truncation_side=side, cache="bypass"))


def count(n: int, settings: Settings, field: str) -> None:
    """At least one and at most the per-request limit."""
    if n == 0:
        raise InvalidArgument(f"{field}: at least one is required")
    if n > settings.max_inputs_per_request:
        raise TooLarge(
            f"{field}: {n} {field} exceed the limit of {settings.max_inputs_per_request} per request; "
            "split the request or use a stream"
        )


def check_options(msg: Any, spec: ModelSpec, directory: Directory, prefix: str = "") -> Options:
    """The options of an EmbedRequest or JobSpec (same field names), checked against the model."""
    where = f"model {spec.name!r} ({spec.family})"
    if msg.input_type not in INPUT_TYPES:
        raise InvalidArgument(f"{prefix}input_type: unknown value {msg.input_type}")
    if msg.output_type not in OUTPUT_TYPES:
        raise InvalidArgument(f"{prefix}output_type: unknown value {msg.output_type}")
    if msg.cache not in CACHE_MODES:
        raise InvalidArgument(f"{prefix}cache: unknown value {msg.cache}")
    output_type = OUTPUT_TYPES[msg.output_type]
    if output_type not in spec.output_types:
        raise InvalidArgument(f"{prefix}output_type: {where} returns {', '.join(spec.output_types)} only")
    prompts = directory.prompts(spec.name)
    if msg.prompt_name and msg.prompt_name not in prompts:
        known = sorted(prompts) or "none"
        raise InvalidArgument(
            f"{prefix}prompt_name: {where} has no prompt {clip(msg.prompt_name)}; its prompts: {known}"
        )
    outputs = check_outputs(msg.outputs, spec, prefix)
    if msg.return_tokens and "sparse" not in (outputs or spec.offered_outputs[:1]):
        raise InvalidArgument(f"{prefix}return_tokens: only sparse outputs return tokens; {where} gives none here")
    if outputs and "sparse" in outputs and output_type != "float32" and len(outputs) == 1:
        raise InvalidArgument(f"{prefix}output_type: sparse vectors are float32 only")
    dimensions = 0
    if msg.HasField("dimensions"):
        full = directory.states[spec.name].dimensions or spec.dimensions
        sizes = directory.matryoshka(spec.name)
        allowed = sorted({*sizes, *([full] if full else [])}, reverse=True)
        if not spec.dense or not sizes:
            raise InvalidArgument(f"{prefix}dimensions: {where} declares no Matryoshka dimensions")
        if msg.dimensions not in allowed:
            raise InvalidArgument(f"{prefix}dimensions: {where} accepts {allowed}, not {msg.dimensions}")
        dimensions = 0 if msg.dimensions == full else int(msg.dimensions)
    input_type = INPUT_TYPES[msg.input_type]
    truncate, chunk = long_inputs(msg, spec, directory, prefix)
    side = tokens.side(msg.truncation_side, spec, directory, f"{prefix}truncation_side")
    return Options(
        truncation_side=side,
        normalize=msg.normalize if msg.HasField("normalize") else None,
        truncate=truncate,
        input_type=input_type,
        prompt=spec.prompt_for(input_type, msg.prompt_name),
        dimensions=dimensions,
        output_type=output_type,
        return_tokens=bool(msg.return_tokens),
        media=mediacheck.options(msg, spec, prefix),
        cache=CACHE_MODES[msg.cache],
        # Tenants never share cache entries: a hit would tell one what another embedded.
        cache_scope=current_tenant(),
        outputs=outputs,
        **chunk,
    )


def check_outputs(asked: Sequence[int], spec: ModelSpec, prefix: str = "") -> tuple[str, ...]:
    """The outputs a request names, each one the model offers and named once; () = its primary output."""
    offered = spec.offered_outputs
    out: list[str] = []
    for i, value in enumerate(asked):
        name = VECTOR_KINDS.get(pb.VectorKind.ValueType(value))
        if name is None:
            raise InvalidArgument(f"{prefix}outputs[{i}]: unknown value {value}; use dense, sparse or multi-vector")
        if name not in offered:
            raise InvalidArgument(
                f"{prefix}outputs[{i}]: model {spec.name!r} ({spec.family}) offers {', '.join(offered) or 'no'} "
                f"output(s), not {name}"
            )
        if name in out:
            raise InvalidArgument(f"{prefix}outputs[{i}]: {name} is listed twice")
        out.append(name)
    return tuple(out)


def long_inputs(msg: Any, spec: ModelSpec, directory: Directory, prefix: str = "") -> tuple[bool, dict[str, Any]]:
    """(truncate, the chunking options) of a request's ``long_inputs``, ``truncate`` and ``chunking``."""
    mode = msg.long_inputs
    if mode not in pb.LongInputs.values():
        raise InvalidArgument(f"{prefix}long_inputs: unknown value {mode}")
    truncate = msg.truncate if msg.HasField("truncate") else None
    if mode != pb.LONG_INPUTS_CHUNK and msg.HasField("chunking"):
        raise InvalidArgument(f"{prefix}chunking: applies only with long_inputs LONG_INPUTS_CHUNK")
    if mode == pb.LONG_INPUTS_DEFAULT:
        return truncate is not False, {}
    if truncate is not None and (mode == pb.LONG_INPUTS_CHUNK or truncate != (mode == pb.LONG_INPUTS_TRUNCATE)):
        raise InvalidArgument(f"{prefix}long_inputs: contradicts truncate={str(truncate).lower()}; set one of the two")
    if mode != pb.LONG_INPUTS_CHUNK:
        return mode == pb.LONG_INPUTS_TRUNCATE, {}
    if spec.family not in CHUNKED_FAMILIES:
        raise InvalidArgument(f"{prefix}long_inputs: model {spec.name!r} ({spec.family}) cannot chunk texts")
    opts = msg.chunking
    if opts.output not in pb.ChunkOutput.values():
        raise InvalidArgument(f"{prefix}chunking.output: unknown value {opts.output}")
    max_tokens = directory.states[spec.name].max_input_tokens or spec.max_input_tokens
    size = opts.size_tokens or max_tokens
    if opts.size_tokens and (opts.size_tokens < MIN_CHUNK_TOKENS or (max_tokens and opts.size_tokens > max_tokens)):
        raise InvalidArgument(
            f"{prefix}chunking.size_tokens: {opts.size_tokens} is outside {MIN_CHUNK_TOKENS}..{max_tokens or 'max'}, "
            f"the model's max input tokens"
        )
    overlap = opts.overlap_tokens if opts.HasField("overlap_tokens") else -1
    if size and overlap > size // 2:
        raise InvalidArgument(f"{prefix}chunking.overlap_tokens: {overlap} exceeds half the chunk size ({size})")
    chunk = {
        "chunking": True,
        "chunk_tokens": int(opts.size_tokens),
        "chunk_overlap": int(overlap),
        "chunk_vectors": opts.output == pb.CHUNK_OUTPUT_CHUNKS,
    }
    return True, chunk


def check_chunks(
    texts: Sequence[wire.Item], options: Options, settings: Settings, start: int = 0, per_request: bool = True
) -> None:
    """Refuse before queueing what surely splits into too many chunks (a word is at least one
    token); the worker counts exactly. Jobs check per input only (their entries hold 64 inputs)."""
    if not options.chunking or not options.chunk_tokens:
        return  # the model's own size: only the worker knows its tokens
    size = options.chunk_tokens
    step = max(1, size - (options.chunk_overlap if options.chunk_overlap >= 0 else size // 8))
    total = 0
    for i, text in enumerate(texts, start):
        words = len(text.split()) if isinstance(text, str) else 0
        least = 1 if words <= size else 1 + -(-(words - size) // step)
        if least > settings.max_chunks_per_input:
            raise InvalidArgument(
                f"inputs[{i}].text: splits into {least}+ chunks of {options.chunk_tokens} tokens, over the limit "
                f"of {settings.max_chunks_per_input} per input"
            )
        total += least
    if per_request and total > settings.max_chunks_per_request:
        raise InvalidArgument(
            f"chunking: the inputs split into {total}+ chunks, over the limit of "
            f"{settings.max_chunks_per_request} per request"
        )


def validate_inputs(
    inputs: Sequence[pb.Input],
    spec: ModelSpec,
    settings: Settings,
    directory: Directory,
    truncate: bool,
    field: str = "inputs",
    start: int = 0,
) -> list[wire.Item]:
    """The texts, images, videos, audio and token ids of ``inputs``, or :class:`InvalidArgument` naming ``field[i]``."""
    out: list[wire.Item] = []
    for i, item in enumerate(inputs, start):
        kind = item.WhichOneof("content")
        if kind == "text":
            out.append(check_text(item.text, f"{field}[{i}].text", spec, settings, directory, truncate))
        elif kind in ("image", "video", "audio"):
            if kind not in spec.takes:
                raise mediacheck.refuse_kind(kind, f"{field}[{i}]", spec)
            # checked by verify_images / mediacheck.verify before anything is queued
            out.append(getattr(item, kind))
        elif kind == "tokens":
            out.append(tokens.check_ids(item.tokens.ids, f"{field}[{i}].tokens", spec, directory))
        else:
            raise InvalidArgument(f"{field}[{i}]: set one of {', '.join(spec.takes)}")
    return out


def check_text(text: str, field: str, spec: ModelSpec, settings: Settings, directory: Directory, truncate: bool) -> str:
    """``text`` if it is non-empty, within the byte limit and (without truncation) not too long."""
    if not text or text.isspace():
        raise InvalidArgument(f"{field}: must not be empty or only whitespace")
    # A code point is at most 4 UTF-8 bytes: only long texts need encoding to measure.
    if len(text) * 4 > settings.max_text_bytes and (size := len(text.encode())) > settings.max_text_bytes:
        raise TooLarge(f"{field}: {size} bytes exceed the limit of {settings.max_text_bytes} bytes")
    # Each whitespace-separated word is at least one token: a cheap, exact
    # lower bound that refuses most over-long texts without tokenizing.
    max_tokens = directory.states[spec.name].max_input_tokens
    if not truncate and max_tokens and len(text.split()) + 2 > max_tokens:
        raise InvalidArgument(
            f"{field}: longer than the {max_tokens} tokens model {spec.name!r} accepts and truncate is false"
        )
    return text


async def verify_images(
    inputs: Sequence[wire.Item], settings: Settings, field: str = "inputs", start: int = 0, kinds: str = ""
) -> None:
    """Decode every image once, off the event loop; a corrupt or truncated one is refused."""
    pending = [
        (i, item)
        for i, item in enumerate(inputs, start)
        if isinstance(item, bytes) and (not kinds or kinds[i - start] == "i")
    ]
    if not pending:
        return
    loop = asyncio.get_running_loop()

    def check_all() -> None:
        for i, data in pending:
            try:
                images.verify(data, settings.max_image_bytes, settings.max_image_pixels)
            except images.ImageError as exc:
                raise InvalidArgument(f"{field}[{i}].image: {exc}") from None

    await loop.run_in_executor(None, check_all)
