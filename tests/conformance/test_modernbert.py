"""ModernBERT embedders, served, equal sentence-transformers: gte-modernbert (CLS) and
modernbert-embed (mean, Nomic prefixes from its folder, Matryoshka 256 -> here 16 of 32)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from embedstream.v1 import embedder_pb2 as pb
from tests.support import familymodels as fm
from tests.support import references
from tests.support.conformance import TEXTS, FamilyModels, Served, check_single_and_batched


@pytest.fixture(scope="module")
def served(family_models: FamilyModels, serve: Callable[..., Served]) -> Served:
    gte = family_models.get("gte-modernbert", lambda d: fm.modernbert(d, "cls", {}))
    embed = family_models.get("modernbert-embed", lambda d: fm.modernbert(d, "mean", fm.NOMIC_PROMPTS))
    return serve(
        {
            "gte-modernbert-base": {"family": "text-dense", "path": str(gte)},
            "modernbert-embed-base": {"family": "text-dense", "path": str(embed), "matryoshka_dimensions": [16]},
        }
    )


def test_gte_modernbert_pools_cls(served: Served, family_models: FamilyModels) -> None:
    ref = references.sentence_transformer(family_models.get("gte-modernbert", lambda d: d))
    check_single_and_batched(served, "gte-modernbert-base", ref.encode(TEXTS), "gte-modernbert")
    info = served.models()["gte-modernbert-base"]
    assert (info.profile.architecture, info.profile.pooling) == ("modernbert", "cls")


def test_modernbert_embed_pools_mean_with_nomic_prefixes_and_matryoshka(
    served: Served, family_models: FamilyModels
) -> None:
    ref = references.sentence_transformer(family_models.get("modernbert-embed", lambda d: d))
    name = "modernbert-embed-base"
    query = ref.encode(TEXTS, prompt_name="query")
    check_single_and_batched(served, name, query, "modernbert-embed query", input_type=pb.INPUT_TYPE_QUERY)
    document = ref.encode(TEXTS, prompt_name="document")
    check_single_and_batched(served, name, document, "modernbert-embed document", input_type=pb.INPUT_TYPE_DOCUMENT)
    cut = ref.encode(TEXTS, prompt_name="query", truncate_dim=16, normalize_embeddings=True)
    check_single_and_batched(
        served, name, cut, "modernbert-embed matryoshka 16", input_type=pb.INPUT_TYPE_QUERY, dimensions=16
    )
    info = served.models()[name]
    assert dict(info.profile.prompts) == fm.NOMIC_PROMPTS and info.profile.pooling == "mean"
