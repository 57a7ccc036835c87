"""Checks every request before anything touches Redis; errors name the field."""

from __future__ import annotations

from collections.abc import Sequence

from embedstream.errors import InvalidArgument
from embedstream.registry import ModelSpec, Registry
from embedstream.settings import Settings
from embedstream.v1 import embedder_pb2 as pb
from gateway.directory import Directory
from gateway.dispatch import Request


def validate(req: pb.EmbedRequest, registry: Registry, settings: Settings, directory: Directory) -> Request:
    """A ready-to-enqueue request, or :class:`InvalidArgument` / ``NotFound``."""
    spec = registry.resolve(req.model)
    n = len(req.inputs)
    if n == 0:
        raise InvalidArgument("inputs: at least one input is required")
    if n > settings.max_inputs_per_request:
        raise InvalidArgument(
            f"inputs: {n} inputs exceed the limit of {settings.max_inputs_per_request} per request; "
            "split the request or use EmbedStream"
        )
    if req.encoding not in pb.VectorEncoding.values():
        raise InvalidArgument(f"encoding: unknown value {req.encoding}")
    truncate = req.truncate if req.HasField("truncate") else True
    texts = validate_inputs(req.inputs, spec, settings, directory, truncate)
    normalize = req.normalize if req.HasField("normalize") else None
    return Request(spec, texts, normalize, truncate)


def validate_inputs(
    inputs: Sequence[pb.Input],
    spec: ModelSpec,
    settings: Settings,
    directory: Directory,
    truncate: bool,
    field: str = "inputs",
    start: int = 0,
) -> list[str]:
    """The texts of ``inputs``, or :class:`InvalidArgument` naming ``field[i]``."""
    max_tokens = directory.states[spec.name].max_input_tokens
    texts: list[str] = []
    for i, item in enumerate(inputs, start):
        kind = item.WhichOneof("content")
        if kind == "image":
            raise InvalidArgument(
                f"{field}[{i}].image: model {spec.name!r} is a {spec.family} model and takes text only"
            )
        if kind != "text":
            raise InvalidArgument(f"{field}[{i}]: set text")
        text = item.text
        if not text or text.isspace():
            raise InvalidArgument(f"{field}[{i}].text: must not be empty or only whitespace")
        # A code point is at most 4 UTF-8 bytes: only long texts need encoding to measure.
        if len(text) * 4 > settings.max_text_bytes and (size := len(text.encode())) > settings.max_text_bytes:
            raise InvalidArgument(
                f"{field}[{i}].text: {size} bytes exceed the limit of {settings.max_text_bytes} bytes"
            )
        # Each whitespace-separated word is at least one token: a cheap, exact
        # lower bound that refuses most over-long texts without tokenizing.
        if not truncate and max_tokens and len(text.split()) + 2 > max_tokens:
            raise InvalidArgument(
                f"{field}[{i}].text: longer than the {max_tokens} tokens model {spec.name!r} accepts "
                "and truncate is false"
            )
        texts.append(text)
    return texts
