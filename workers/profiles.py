"""A loaded model's profile (:class:`embedstream.profile.Profile`): what it serves and how.

Families that read more from a folder (text-dense: pooling, the folder's prompts,
conventions) carry a ``profile`` of their own; for the others it is built from
the registry entry and the model's declared shape.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from embedstream.profile import Profile
from embedstream.registry import ModelSpec

LOADERS = {"OpenClipModel": "open_clip", "DebugModel": "debug"}


def describe(spec: ModelSpec, model: Any) -> Profile:
    """How ``model`` is served: its own profile, or one from the registry and its shape."""
    own = getattr(model, "profile", None)
    engine = "" if spec.family == "debug" else str(getattr(model, "engine", "torch"))
    if isinstance(own, Profile):
        return replace(own, vocabulary_size=_vocabulary_size(model), engine=engine)
    return replace(built(spec, model), engine=engine)


def built(spec: ModelSpec, model: Any, **known: Any) -> Profile:
    """The profile the registry and ``model``'s shape give, with what its family ``known`` on top."""
    config = getattr(getattr(model, "model", None), "config", None)
    found = Profile(
        family=spec.family,
        loader=LOADERS.get(type(model).__name__, "transformers"),
        architecture=str(getattr(config, "model_type", "") or type(model).__name__),
        normalizes=bool(model.normalizes),
        dimensions=int(model.dimensions),
        max_input_tokens=int(model.max_input_tokens),
        padding_side=str(getattr(model, "padding_side", "right")),
        prompts=dict(spec.prompts),
        query_prompt=spec.query_prompt,
        document_prompt=spec.document_prompt,
        default_prompt=spec.default_prompt,
        matryoshka_dimensions=spec.matryoshka_dimensions,
        heads=tuple(type(m).__name__ for m in getattr(model, "heads", ())),
        vocabulary_size=_vocabulary_size(model),
    )
    return replace(found, **known)


def _vocabulary_size(model: Any) -> int:
    """Ids the model's tokenizer gives (0 where it has no Vocabulary: Tokenize and token ids refused)."""
    vocabulary = getattr(model, "vocabulary", None)
    return int(vocabulary.size) if vocabulary is not None else 0
