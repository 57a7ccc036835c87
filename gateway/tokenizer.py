"""Tokenize and Decode: requests checked, and the worker's answers as protobuf.

The gateway holds no model: both travel the model's queue as entries of their
own kind, and one of its workers answers from the model's tokenizer without a
forward pass (``embedstream.workers.textops``). So they pass the same
admission, deadlines and metrics as Embed, and answer with the exact tokenizer
the model runs.
"""

from __future__ import annotations

from embedstream import replywire, wire
from embedstream.errors import EmbedstreamError, TooLarge
from embedstream.gateway import tokens
from embedstream.gateway.directory import Directory
from embedstream.gateway.dispatch import Options, Request
from embedstream.gateway.shape import answered, checked
from embedstream.gateway.validation import check_text, count
from embedstream.registry import Registry
from embedstream.settings import Settings
from embedstream.v1 import embedder_pb2 as pb


def validate_tokenize(req: pb.TokenizeRequest, registry: Registry, settings: Settings, directory: Directory) -> Request:
    """A ready-to-enqueue Tokenize request."""
    spec = registry.resolve(req.model)
    tokens.has_tokenizer(spec, directory)
    count(len(req.inputs), settings, "inputs")
    side = tokens.side(req.truncation_side, spec, directory)
    # Every text is tokenized, however long: truncate only says which tokens come back.
    texts = [check_text(t, f"inputs[{i}]", spec, settings, directory, True) for i, t in enumerate(req.inputs)]
    options = Options(
        kind="tokenize",
        truncate=req.truncate if req.HasField("truncate") else True,
        truncation_side=side,
        special_tokens=req.add_special_tokens if req.HasField("add_special_tokens") else True,
    )
    return Request(spec, list(texts), options)


def validate_decode(req: pb.DecodeRequest, registry: Registry, settings: Settings, directory: Directory) -> Request:
    """A ready-to-enqueue Decode request; each sequence's ids within the model's vocabulary."""
    spec = registry.resolve(req.model)
    tokens.has_tokenizer(spec, directory)
    count(len(req.inputs), settings, "inputs")
    ids: list[wire.Item] = []
    for i, item in enumerate(req.inputs):
        if len(item.ids) > settings.max_text_bytes:
            raise TooLarge(f"inputs[{i}].ids: {len(item.ids)} ids exceed the limit of {settings.max_text_bytes}")
        ids.append(tokens.check_ids(item.ids, f"inputs[{i}].ids", spec, directory, embed=False))
    skip = req.skip_special_tokens if req.HasField("skip_special_tokens") else True
    return Request(spec, ids, Options(kind="decode", special_tokens=not skip))


def respond_tokenize(
    request: pb.TokenizeRequest, valid: Request, reply: replywire.Reply, received: float, directory: Directory
) -> pb.TokenizeResponse:
    """Each text's tokens: id, the characters it covers, its vocabulary string, offsets."""
    checked(valid, reply)
    if reply.token_lists is None:
        raise EmbedstreamError.from_code("INTERNAL", "worker answered Tokenize without tokens")
    results = []
    for text, found in zip(request.inputs, reply.token_lists):
        items = []
        for token_id, token, special, (start, stop) in zip(
            found.ids, found.tokens, found.special, zip(found.offsets[0::2], found.offsets[1::2])
        ):
            covered = token if special else text[start:stop]
            items.append(pb.Token(id=token_id, text=covered, token=token, special=bool(special)))
            items[-1].start, items[-1].stop = start, stop
        results.append(pb.TokenizedText(tokens=items, total=found.total, truncated=found.truncated))
    max_tokens = directory.states[valid.spec.name].max_input_tokens or valid.spec.max_input_tokens
    common = answered(request.request_id, valid, reply, received)
    return pb.TokenizeResponse(results=results, max_input_tokens=max_tokens, **common)


def respond_decode(
    request: pb.DecodeRequest, valid: Request, reply: replywire.Reply, received: float
) -> pb.DecodeResponse:
    """Each sequence's text."""
    checked(valid, reply)
    if reply.texts is None:
        raise EmbedstreamError.from_code("INTERNAL", "worker answered Decode without texts")
    return pb.DecodeResponse(texts=reply.texts, **answered(request.request_id, valid, reply, received))
