"""A loaded model's profile (:class:`embedstream.profile.Profile`): what it serves and how.

Families that read more from a folder (text-dense: pooling, the folder's prompts,
conventions) carry a ``profile`` of their own; for the others it is built from
the registry entry and the model's declared shape.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from embedstream.profile import Profile
from embedstream.registry import ModelSpec

LOADERS = {"OpenClipModel": "open_clip", "DebugModel": "debug"}


def describe(spec: ModelSpec, model: Any) -> Profile:
    """How ``model`` is served: its own profile, or one from the registry and its shape."""
    own = getattr(model, "profile", None)
    return own if isinstance(own, Profile) else built(spec, model)


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
    )
    return dataclasses.replace(found, **known)
