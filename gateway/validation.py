"""Checks every request before anything touches Redis; errors name the field.

Options (input type, prompt, Matryoshka dimensions, output type, ...) are
checked against what the model's family and registry entry support
(``gateway/optioncheck.py``), the same way for Embed, EmbedStream and jobs;
here are the inputs and the calls' own checks. :func:`validate_inputs` only lets
images through to image models; :func:`verify_images` then checks each one off
the event loop, header first (format, bytes, pixels: cheap, so a decompression
bomb never costs a decode), then one cheap decode that refuses truncated or
corrupt data. Video and audio inputs go only to models that take them
(the registry's modalities); ``gateway/mediacheck.py`` checks each clip.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from embedstream import images, wire
from embedstream.errors import InvalidArgument, TooLarge
from embedstream.gateway import mediacheck, tokens
from embedstream.gateway.directory import Directory
from embedstream.gateway.dispatch import Options, Request
from embedstream.gateway.optioncheck import check_chunks, check_options
from embedstream.registry import ModelSpec, Registry
from embedstream.settings import Settings
from embedstream.v1 import embedder_pb2 as pb


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
