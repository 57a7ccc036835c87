"""Checks every request before anything touches Redis; errors name the field.

Options (input type, prompt, Matryoshka dimensions, output type, ...) are
checked against what the model's family and registry entry support, the same
way for Embed, EmbedStream, Rerank and jobs. :func:`validate_inputs` only lets
images through to image models; :func:`verify_images` then checks each one off
the event loop, header first (format, bytes, pixels: cheap, so a decompression
bomb never costs a decode), then one cheap decode that refuses truncated or
corrupt data.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from embedstream.gateway.directory import Directory
from embedstream.gateway.dispatch import Options, Request

from embedstream import images
from embedstream.errors import InvalidArgument, TooLarge
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


def validate(req: pb.EmbedRequest, registry: Registry, settings: Settings, directory: Directory) -> Request:
    """A ready-to-enqueue request, or :class:`InvalidArgument` / ``NotFound``."""
    spec = registry.resolve(req.model)
    if spec.family == "rerank":
        raise InvalidArgument(f"model: {spec.name!r} is a rerank model; call Rerank")
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
    return Request(spec, inputs, options)


def validate_rerank(req: pb.RerankRequest, registry: Registry, settings: Settings, directory: Directory) -> Request:
    """A ready-to-enqueue rerank request: the documents are the inputs, the query rides along."""
    spec = registry.resolve(req.model)
    if spec.family != "rerank":
        raise InvalidArgument(f"model: {spec.name!r} is a {spec.family} model; Rerank needs a rerank model")
    count(len(req.documents), settings, "documents")
    truncate = req.truncate if req.HasField("truncate") else True
    query = check_text(req.query, "query", spec, settings, directory, truncate)
    docs = [check_text(d, f"documents[{i}]", spec, settings, directory, truncate) for i, d in enumerate(req.documents)]
    return Request(spec, list(docs), Options(truncate=truncate, query=query))


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
    output_type = OUTPUT_TYPES[msg.output_type]
    if output_type not in spec.output_types:
        raise InvalidArgument(f"{prefix}output_type: {where} returns {', '.join(spec.output_types)} only")
    if msg.prompt_name and msg.prompt_name not in spec.prompts:
        known = sorted(spec.prompts) or "none"
        raise InvalidArgument(f"{prefix}prompt_name: {where} has no prompt {msg.prompt_name!r}; its prompts: {known}")
    outputs = check_outputs(msg.outputs, spec, prefix)
    if msg.return_tokens and "sparse" not in (outputs or spec.offered_outputs[:1]):
        raise InvalidArgument(f"{prefix}return_tokens: only sparse outputs return tokens; {where} gives none here")
    if outputs and "sparse" in outputs and output_type != "float32" and len(outputs) == 1:
        raise InvalidArgument(f"{prefix}output_type: sparse vectors are float32 only")
    dimensions = 0
    if msg.HasField("dimensions"):
        full = directory.states[spec.name].dimensions or spec.dimensions
        allowed = sorted({*spec.matryoshka_dimensions, *([full] if full else [])}, reverse=True)
        if not spec.dense or not spec.matryoshka_dimensions:
            raise InvalidArgument(f"{prefix}dimensions: {where} declares no Matryoshka dimensions")
        if msg.dimensions not in allowed:
            raise InvalidArgument(f"{prefix}dimensions: {where} accepts {allowed}, not {msg.dimensions}")
        dimensions = 0 if msg.dimensions == full else int(msg.dimensions)
    input_type = INPUT_TYPES[msg.input_type]
    return Options(
        normalize=msg.normalize if msg.HasField("normalize") else None,
        truncate=msg.truncate if msg.HasField("truncate") else True,
        input_type=input_type,
        prompt=spec.prompt_for(input_type, msg.prompt_name),
        dimensions=dimensions,
        output_type=output_type,
        return_tokens=bool(msg.return_tokens),
        outputs=outputs,
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


def validate_inputs(
    inputs: Sequence[pb.Input],
    spec: ModelSpec,
    settings: Settings,
    directory: Directory,
    truncate: bool,
    field: str = "inputs",
    start: int = 0,
) -> list[str | bytes]:
    """The texts and images of ``inputs``, or :class:`InvalidArgument` naming ``field[i]``."""
    out: list[str | bytes] = []
    for i, item in enumerate(inputs, start):
        kind = item.WhichOneof("content")
        if kind == "image":
            if not spec.images:
                raise InvalidArgument(
                    f"{field}[{i}].image: model {spec.name!r} is a {spec.family} model and takes text only"
                )
            out.append(item.image)  # checked by verify_images before anything is queued
        elif kind == "text":
            out.append(check_text(item.text, f"{field}[{i}].text", spec, settings, directory, truncate))
        else:
            raise InvalidArgument(f"{field}[{i}]: set text" + (" or image" if spec.images else ""))
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
    inputs: Sequence[str | bytes], settings: Settings, field: str = "inputs", start: int = 0
) -> None:
    """Decode every image once, off the event loop; a corrupt or truncated one is refused."""
    pending = [(i, item) for i, item in enumerate(inputs, start) if isinstance(item, bytes)]
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
