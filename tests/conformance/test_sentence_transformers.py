"""Sentence-transformers folders, served, equal SentenceTransformer.encode: every Pooling mode,
``include_prompt: false``, Dense and Normalize, the folder's own prompts and the registry's on top;
on both engines (torch, and ONNX Runtime where it serves the folder)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from embedstream.v1 import embedder_pb2 as pb
from tests.support import familymodels as fm
from tests.support import references
from tests.support.conformance import TEXTS, FamilyModels, Served, check_single_and_batched

#: name -> (pooling, include_prompt, dense)
VARIANTS = {
    "st-cls": ("cls", True, False),
    "st-mean": ("mean", True, False),
    "st-max": ("max", False, False),
    "st-sqrt": ("mean_sqrt_len_tokens", True, True),
    "st-wmean": ("weightedmean", False, False),
    "st-last": ("lasttoken", False, True),
    "st-max-in": ("max", True, False),
    "st-mean-torch": ("mean", True, False),
}
#: Served on the onnx engine (``engine = "onnx"``: refused rather than run on torch); the rest on torch.
ONNX = ("st-cls", "st-mean", "st-max-in")
REGISTRY_PROMPTS = {"query": "q-override: ", "classify": "classify this: "}


@pytest.fixture(scope="module")
def served(family_models: FamilyModels, serve: Callable[..., Served]) -> Served:
    models: dict[str, dict[str, object]] = {}
    for name, (pooling, include, dense) in VARIANTS.items():
        path = family_models.get(
            name, lambda d, p=pooling, i=include, x=dense: fm.bert_st(d, p, fm.E5_PROMPTS, include_prompt=i, dense=x)
        )
        models[name] = {"family": "text-dense", "path": str(path), "engine": "onnx" if name in ONNX else "torch"}
    models["st-mean"]["prompts"] = REGISTRY_PROMPTS
    return serve(models)


def reference(family_models: FamilyModels, name: str) -> Any:
    return references.sentence_transformer(family_models.get(name, lambda d: d))


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_pooling_mode_matches_sentence_transformers(
    served: Served, family_models: FamilyModels, name: str
) -> None:
    ref = reference(family_models, name)
    check_single_and_batched(served, name, ref.encode(TEXTS), f"{name} plain")
    check_single_and_batched(
        served,
        name,
        ref.encode(TEXTS, prompt_name="document"),
        f"{name} folder prompt document",
        input_type=pb.INPUT_TYPE_DOCUMENT,
    )


def test_folder_prompts_are_read_and_the_registry_overrides_and_extends_them(
    served: Served, family_models: FamilyModels
) -> None:
    ref = reference(family_models, "st-mean")
    check_single_and_batched(
        served, "st-mean", ref.encode(TEXTS, prompt="q-override: "), "registry query", input_type=pb.INPUT_TYPE_QUERY
    )
    check_single_and_batched(
        served, "st-mean", ref.encode(TEXTS, prompt="classify this: "), "registry classify", prompt_name="classify"
    )
    check_single_and_batched(
        served, "st-mean", ref.encode(TEXTS, prompt_name="document"), "folder document", prompt_name="document"
    )
    listed = served.models()
    assert list(listed["st-mean"].capabilities.prompts) == ["classify", "document", "query"]
    assert dict(listed["st-mean"].profile.prompts)["query"] == "q-override: "
    assert dict(listed["st-cls"].profile.prompts) == fm.E5_PROMPTS


def test_list_models_carries_each_folders_profile(served: Served) -> None:
    listed = served.models()
    for name, (pooling, include, dense) in VARIANTS.items():
        profile = listed[name].profile
        assert listed[name].state == pb.MODEL_STATE_SERVING and not listed[name].failure
        assert (profile.loader, profile.architecture, profile.pooling) == ("sentence-transformers", "bert", pooling)
        assert profile.engine == ("onnx" if name in ONNX else "torch")
        assert profile.include_prompt == include and profile.normalizes and listed[name].normalizes
        assert list(profile.heads) == (["Dense", "Normalize"] if dense else ["Normalize"])
        assert profile.max_input_tokens == 128 and listed[name].dimensions == (16 if dense else 32)
