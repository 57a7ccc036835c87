"""Decoder embedders, served, equal sentence-transformers with lasttoken pooling on the same tiny
model: e5-mistral-7b-instruct (MistralModel, right padding, registry instruction) and
Qwen3-Embedding (Qwen3Model, left padding, the folder's query prompt, Matryoshka)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from embedstream.v1 import embedder_pb2 as pb
from tests.support import familymodels as fm
from tests.support import references
from tests.support.conformance import TEXTS, FamilyModels, Served, check_single_and_batched

TASK = "Given a web search query, retrieve relevant passages that answer the query"


@pytest.fixture(scope="module")
def served(family_models: FamilyModels, serve: Callable[..., Served]) -> Served:
    mistral = family_models.get("e5-mistral", lambda d: fm.decoder(d, "mistral"))
    qwen3 = family_models.get("qwen3-embedding", lambda d: fm.decoder(d, "qwen3"))
    return serve(
        {
            "e5-mistral-7b-instruct": {"family": "text-dense", "path": str(mistral), "instruction": TASK},
            "qwen3-embedding": {"family": "text-dense", "path": str(qwen3), "matryoshka_dimensions": [16, 8]},
        }
    )


def test_e5_mistral_pools_the_last_token_of_right_padded_batches(served: Served, family_models: FamilyModels) -> None:
    ref = references.sentence_transformer(family_models.get("e5-mistral", lambda d: d))
    name = "e5-mistral-7b-instruct"
    query = ref.encode(TEXTS, prompt=f"Instruct: {TASK}\nQuery: ")
    check_single_and_batched(served, name, query, "e5-mistral query", input_type=pb.INPUT_TYPE_QUERY)
    check_single_and_batched(served, name, ref.encode(TEXTS), "e5-mistral document", input_type=pb.INPUT_TYPE_DOCUMENT)
    info = served.models()[name]
    assert (info.profile.architecture, info.profile.pooling, info.profile.padding_side) == (
        "mistral",
        "lasttoken",
        "right",
    )


def test_qwen3_pools_the_last_token_of_left_padded_batches_with_matryoshka(
    served: Served, family_models: FamilyModels
) -> None:
    ref = references.sentence_transformer(family_models.get("qwen3-embedding", lambda d: d))
    name = "qwen3-embedding"
    assert ref.tokenizer.padding_side == "left"
    query = ref.encode(TEXTS, prompt_name="query")
    check_single_and_batched(served, name, query, "qwen3 query", input_type=pb.INPUT_TYPE_QUERY)
    check_single_and_batched(served, name, ref.encode(TEXTS), "qwen3 document", input_type=pb.INPUT_TYPE_DOCUMENT)
    for size in (16, 8):
        cut = ref.encode(TEXTS, prompt_name="query", truncate_dim=size, normalize_embeddings=True)
        check_single_and_batched(
            served, name, cut, f"qwen3 matryoshka {size}", input_type=pb.INPUT_TYPE_QUERY, dimensions=size
        )
    info = served.models()[name]
    assert info.profile.padding_side == "left" and info.profile.prompts["query"] == fm.QWEN3_QUERY
