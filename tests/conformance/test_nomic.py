"""Nomic Embed v1.5, served, equals transformers' NomicBert + the model card's formula: mean
pooling, the task prefixes from the model (no registry prompts), and Matryoshka as layer norm
over the full vector, then the cut, then L2 normalization."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from embedstream.v1 import embedder_pb2 as pb
from embedstream.workers.conventions import NOMIC_PREFIXES
from tests.support import familymodels as fm
from tests.support.conformance import TEXTS, FamilyModels, Served, check_single_and_batched

NAME = "nomic-embed-text-v1.5"


@pytest.fixture(scope="module")
def served(family_models: FamilyModels, serve: Callable[..., Served]) -> Served:
    path = family_models.get("nomic", fm.nomic)
    return serve({NAME: {"family": "text-dense", "path": str(path), "matryoshka_dimensions": [16, 8]}})


def card(family_models: FamilyModels, prefix: str, dimensions: int = 0) -> np.ndarray:
    """The model card's recipe on transformers' NomicBertModel."""
    from transformers import AutoModel, AutoTokenizer

    hf = family_models.get("nomic", fm.nomic).parent / "nomic-hf"
    model = AutoModel.from_pretrained(str(hf)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(hf))
    batch = tokenizer([prefix + t for t in TEXTS], padding=True, truncation=True, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    vecs = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    if dimensions:
        vecs = torch.nn.functional.layer_norm(vecs, normalized_shape=(vecs.shape[1],))[:, :dimensions]
    return torch.nn.functional.normalize(vecs, p=2, dim=1).numpy()


def test_task_prefixes_come_from_the_model(served: Served, family_models: FamilyModels) -> None:
    query = card(family_models, "search_query: ")
    check_single_and_batched(served, NAME, query, "nomic search_query", input_type=pb.INPUT_TYPE_QUERY)
    document = card(family_models, "search_document: ")
    check_single_and_batched(served, NAME, document, "nomic search_document", input_type=pb.INPUT_TYPE_DOCUMENT)
    for task in ("clustering", "classification"):
        check_single_and_batched(served, NAME, card(family_models, f"{task}: "), f"nomic {task}", prompt_name=task)
    info = served.models()[NAME]
    assert sorted(info.capabilities.prompts) == sorted(NOMIC_PREFIXES)
    assert (info.capabilities.query_prompt, info.capabilities.document_prompt) == ("search_query", "search_document")
    assert info.profile.architecture == "nomic_bert" and info.profile.pooling == "mean"


def test_matryoshka_layer_norms_then_cuts_then_normalizes(served: Served, family_models: FamilyModels) -> None:
    for size in (16, 8):
        want = card(family_models, "search_query: ", size)
        check_single_and_batched(
            served, NAME, want, f"nomic matryoshka {size}", input_type=pb.INPUT_TYPE_QUERY, dimensions=size
        )
    plain_cut = card(family_models, "search_query: ")[:, :16]
    plain_cut /= np.linalg.norm(plain_cut, axis=1, keepdims=True)
    got = served.embed(NAME, TEXTS, input_type=pb.INPUT_TYPE_QUERY, dimensions=16)
    assert np.abs(got - plain_cut).max() > 1e-3, "a plain cut is not Nomic's Matryoshka"
    info = served.models()[NAME]
    assert info.profile.matryoshka_layer_norm and list(info.profile.matryoshka_dimensions) == [16, 8]
