"""Token ids and truncation sides: the checks Embed, Rerank, Classify, Tokenize and Decode share.

The gateway holds no model; what it knows of a model's tokenizer is what its
workers publish (the profile's vocabulary size, the max input tokens). Token
ids are checked against those before anything is queued, and again by the
worker, which knows them for certain.
"""

from __future__ import annotations

from collections.abc import Sequence

from embedstream.errors import InvalidArgument
from embedstream.gateway.directory import Directory
from embedstream.registry import ModelSpec
from embedstream.v1 import embedder_pb2 as pb

SIDES = {pb.TRUNCATION_SIDE_RIGHT: "right", pb.TRUNCATION_SIDE_LEFT: "left"}
#: Families whose inputs may be token ids (Input.tokens): text only, no pairs, no markers.
TOKEN_FAMILIES = ("text-dense", "sparse", "multi-vector")


def vocabulary_size(spec: ModelSpec, directory: Directory) -> int:
    """Ids below this are the model's; 0 until a worker published it (or where it has no tokenizer)."""
    found = directory.states[spec.name].profile
    return found.vocabulary_size if found is not None else 0


def has_tokenizer(spec: ModelSpec, directory: Directory) -> None:
    """Refuse a model without a fast tokenizer to expose (debug; open_clip's own; SigLIP's SentencePiece)."""
    found = directory.states[spec.name].profile
    if spec.family == "debug" or (found is not None and not found.vocabulary_size):
        raise InvalidArgument(
            f"model: {spec.name!r} ({spec.family}) has no Hugging Face fast tokenizer; Tokenize, Decode and "
            "token-id inputs need one"
        )


def side(
    value: pb.TruncationSide.ValueType, spec: ModelSpec, directory: Directory, field: str = "truncation_side"
) -> str:
    """The truncation side a request names, where the model can cut on it."""
    if value not in SIDES:
        raise InvalidArgument(f"{field}: unknown value {value}")
    name = SIDES[value]
    found = directory.states[spec.name].profile
    if name == "left" and spec.family == "image-text" and found is not None and not found.vocabulary_size:
        raise InvalidArgument(f"{field}: model {spec.name!r} ({spec.family}) cuts texts on the right only")
    return name


def check_ids(ids: Sequence[int], field: str, spec: ModelSpec, directory: Directory, embed: bool = True) -> list[int]:
    """Token ids to embed as given (``embed``), or to decode: at least one, each in the vocabulary;
    to embed, a text-only family and no more than the model reads (ids are never cut)."""
    if embed and spec.family not in TOKEN_FAMILIES:
        raise InvalidArgument(
            f"{field}: model {spec.name!r} is a {spec.family} model; token ids are for "
            f"{', '.join(TOKEN_FAMILIES)} models (send text)"
        )
    if not ids:
        raise InvalidArgument(f"{field}: at least one token id is required")
    max_tokens = directory.states[spec.name].max_input_tokens or spec.max_input_tokens
    if embed and max_tokens and len(ids) > max_tokens:
        raise InvalidArgument(
            f"{field}: {len(ids)} token ids exceed the {max_tokens} tokens model {spec.name!r} reads "
            "(special tokens included); token ids are never cut"
        )
    size = vocabulary_size(spec, directory)
    if size and (bad := next((i for i in ids if i >= size), None)) is not None:
        raise InvalidArgument(
            f"{field}: token id {bad} is outside the vocabulary of model {spec.name!r} (ids 0 to {size - 1})"
        )
    return list(ids)
