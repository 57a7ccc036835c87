"""E5 and BGE through the sentence-transformers path, served, equal SentenceTransformer.encode:
E5 (mean + Normalize, ``query: ``/``passage: `` from its folder) and BGE (CLS + Normalize, the
query instruction from registry lines, documents plain)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from embedstream.v1 import embedder_pb2 as pb
from tests.support import familymodels as fm
from tests.support import references
from tests.support.conformance import TEXTS, FamilyModels, Served, check_single_and_batched


@pytest.fixture(scope="module")
def served(family_models: FamilyModels, serve: Callable[..., Served]) -> Served:
    e5 = family_models.get("e5", lambda d: fm.bert_st(d, "mean", fm.E5_PROMPTS))
    bge = family_models.get("bge", lambda d: fm.bert_st(d, "cls"))
    return serve(
        {
            "multilingual-e5-small": {"family": "text-dense", "path": str(e5)},
            "bge-base-en-v1.5": {"family": "text-dense", "path": str(bge), "prompts": fm.BGE_PROMPTS},
        }
    )


def test_e5_prefixes_query_and_passage(served: Served, family_models: FamilyModels) -> None:
    ref = references.sentence_transformer(family_models.get("e5", lambda d: d))
    name = "multilingual-e5-small"
    query = ref.encode(TEXTS, prompt="query: ")
    check_single_and_batched(served, name, query, "e5 query", input_type=pb.INPUT_TYPE_QUERY)
    passage = ref.encode(TEXTS, prompt="passage: ")
    check_single_and_batched(served, name, passage, "e5 passage", input_type=pb.INPUT_TYPE_DOCUMENT)


def test_bge_instructs_queries_and_leaves_documents_plain(served: Served, family_models: FamilyModels) -> None:
    ref = references.sentence_transformer(family_models.get("bge", lambda d: d))
    name = "bge-base-en-v1.5"
    query = ref.encode(TEXTS, prompt=fm.BGE_PROMPTS["query"])
    check_single_and_batched(served, name, query, "bge query", input_type=pb.INPUT_TYPE_QUERY)
    check_single_and_batched(served, name, ref.encode(TEXTS), "bge document", input_type=pb.INPUT_TYPE_DOCUMENT)
    assert served.models()[name].profile.pooling == "cls"
