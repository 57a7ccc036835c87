"""The model profile: how a folder is served, as the worker's loader read it.

``embedstream inspect FOLDER`` prints it without serving; a serving worker
publishes it (``keys.profile``, rewritten with every heartbeat) and ListModels
carries it, so an operator sees the same facts both ways: family, loader,
pooling, normalization, prompts (the folder's own, the family's, and the
registry's on top), Matryoshka sizes, heads found and max tokens.
Layout: one JSON object, the fields of :class:`Profile` plus ``"v"``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from embedstream import keys

VERSION = 1


@dataclass(frozen=True, slots=True)
class Profile:
    """What a model folder is and how it is served."""

    family: str
    #: What reads the folder: "sentence-transformers", "transformers", "open_clip", ...
    loader: str = ""
    #: The transformers model type (bert, nomic_bert, qwen3, ...) or the backend's name.
    architecture: str = ""
    pooling: str = ""
    #: Prompt tokens count in the pooled vector (sentence-transformers ``include_prompt``).
    include_prompt: bool = True
    normalizes: bool = False
    dimensions: int = 0
    max_input_tokens: int = 0
    #: Which side a batch is padded on ("right" or "left").
    padding_side: str = "right"
    #: Name -> text of every prompt a request may name.
    prompts: dict[str, str] = field(default_factory=dict)
    query_prompt: str = ""
    document_prompt: str = ""
    default_prompt: str = ""
    matryoshka_dimensions: tuple[int, ...] = ()
    #: Matryoshka cuts layer-normalize the full vector first (Nomic Embed v1.5).
    matryoshka_layer_norm: bool = False
    #: Modules/heads found after the encoder (Dense, Normalize, MLM head, ...).
    heads: tuple[str, ...] = ()
    #: Token ids the model takes are below this (0: no tokenizer to expose).
    vocabulary_size: int = 0
    #: Classifiers: the labels in id order, and the function their scores get by default.
    labels: tuple[str, ...] = ()
    function: str = ""
    #: What runs the forward pass: "torch", "onnx" (ONNX Runtime), or "" (the debug model).
    engine: str = ""

    def lines(self) -> list[str]:
        """The profile as ``key: value`` lines, for people."""
        prompts = ", ".join(f"{k}={v!r}" for k, v in sorted(self.prompts.items())) or "none"
        picks = (("query", self.query_prompt), ("document", self.document_prompt), ("default", self.default_prompt))
        chosen = " ".join(f"{kind}={name or '-'}" for kind, name in picks)
        sizes = ", ".join(str(d) for d in self.matryoshka_dimensions) or "none"
        if self.matryoshka_dimensions and self.matryoshka_layer_norm:
            sizes += " (layer norm, cut, L2-normalize)"
        return [
            f"family: {self.family}",
            f"loader: {self.loader}",
            f"architecture: {self.architecture}",
            f"engine: {self.engine or '-'}",
            f"pooling: {self.pooling or '-'}" + ("" if self.include_prompt else " (prompt tokens excluded)"),
            f"normalizes: {'yes' if self.normalizes else 'no'}",
            f"dimensions: {self.dimensions}",
            f"max input tokens: {self.max_input_tokens}",
            f"padding: {self.padding_side}",
            f"prompts: {prompts}",
            f"input types select: {chosen}",
            f"matryoshka dimensions: {sizes}",
            f"heads: {', '.join(self.heads) or 'none'}",
            f"vocabulary: {self.vocabulary_size or 'none'}",
            *([f"labels: {', '.join(self.labels)} (scores: {self.function})"] if self.labels else []),
        ]


def encode(profile: Profile) -> str:
    """The profile's stored form."""
    return json.dumps({"v": VERSION, **asdict(profile)})


def decode(raw: bytes | str | None) -> Profile | None:
    """The stored profile, or None where there is none (or it is unreadable)."""
    if not raw:
        return None
    try:
        body = json.loads(raw)
        body.pop("v", None)
        body["matryoshka_dimensions"] = tuple(body.get("matryoshka_dimensions", ()))
        body["heads"] = tuple(body.get("heads", ()))
        body["labels"] = tuple(body.get("labels", ()))
        return Profile(**body)
    except (ValueError, TypeError):
        return None


def publish(redis: Any, model: str, profile: Profile) -> Any:
    """Store ``model``'s profile (an awaitable, or queued on a pipeline)."""
    return redis.set(keys.profile(model), encode(profile))


def read(redis: Any, model: str) -> Any:
    """The raw profile of ``model`` (see :func:`decode`)."""
    return redis.get(keys.profile(model))
