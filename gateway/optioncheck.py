"""A request's options checked against its model: input and output types, prompt, outputs, Matryoshka, long inputs.

The same checks serve Embed, EmbedStream and jobs (an EmbedRequest and a JobSpec name
their options alike); each error names the field, with the job's prefix where there is
one. Long inputs: truncate, or chunk (the families that can), with a cheap lower bound
on the chunks a request makes, refused before anything is queued.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from embedstream import wire
from embedstream.errors import InvalidArgument, clip
from embedstream.gateway import mediacheck, tokens
from embedstream.gateway.auth import current_tenant
from embedstream.gateway.directory import Directory
from embedstream.gateway.dispatch import Options
from embedstream.registry import ModelSpec
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
