"""A PyLate ColBERT folder served through gateway, Redis and worker equals PyLate's encoding.

pylate 1.6 (the reference) pins sentence-transformers 5.3 and cannot load a folder
under the 6.2 this project runs (sentence-transformers 6 adds a mean Pooling that
PyLate then fails to convert), so :func:`reference` is PyLate's
``ColBERT.tokenize`` and ``encode(..., is_query=...)`` written out with
transformers' own BertModel: marker after CLS, cut one short, [MASK] expansion
to query_length (unattended, kept), punctuation skiplist for documents, Linear,
normalise. :func:`test_pylate_still_cannot_load_here` keeps that claim honest.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from embedstream.v1 import embedder_pb2 as pb
from tests.support import tinyheads
from tests.support.conformance import Served

TEXTS = ["a photo of a cat", "Redis streams hold the queue.", "embedding models, turn text into vectors: fast! " * 4]
TOL = 1e-4


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tinyheads.pylate_colbert(tmp_path_factory.mktemp("pylate") / "colbertv2")


@pytest.fixture(scope="module")
def service(serve: Callable[..., Served], folder: Path) -> Served:
    return serve({"colbertv2": {"family": "multi-vector", "path": str(folder)}})


def reference(folder: Path, texts: list[str], is_query: bool) -> list[np.ndarray]:
    """PyLate's ColBERT.encode(texts, is_query=...) on the folder, with transformers' classes."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, BertModel

    cfg = json.loads((folder / "config_sentence_transformers.json").read_text())
    tok = AutoTokenizer.from_pretrained(folder)
    model = BertModel.from_pretrained(folder).eval()
    linear = load_file(str(folder / "1_Dense" / "model.safetensors"))["linear.weight"]
    length = cfg["query_length"] if is_query else cfg["document_length"]
    prefix = tok.convert_tokens_to_ids(cfg["query_prefix"] if is_query else cfg["document_prefix"])
    tok.pad_token = tok.mask_token  # PyLate pads, and expands queries, with [MASK]
    padding = "max_length" if is_query and cfg["do_query_expansion"] else True
    enc = tok(texts, truncation=True, max_length=length - 1, padding=padding, return_tensors="pt")
    ids = torch.cat([enc["input_ids"][:, :1], torch.full((len(texts), 1), prefix), enc["input_ids"][:, 1:]], dim=1)
    mask = torch.cat(
        [enc["attention_mask"][:, :1], torch.ones(len(texts), 1, dtype=torch.long), enc["attention_mask"][:, 1:]], 1
    )
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids)).last_hidden_state
        out = out @ linear.T
    skip = torch.tensor([tok.convert_tokens_to_ids(w) for w in cfg["skiplist_words"]])
    vectors = []
    for i in range(len(texts)):
        if is_query:
            keep = torch.ones(ids.shape[1], dtype=torch.bool)
        else:
            keep = mask[i].bool() & ~torch.isin(ids[i], skip)
        vectors.append(torch.nn.functional.normalize(out[i][keep], p=2, dim=1).numpy())
    return vectors


def embed(service: Served, texts: list[str], input_type: int) -> list[np.ndarray]:
    request = pb.EmbedRequest(model="colbertv2", inputs=[pb.Input(text=t) for t in texts], input_type=input_type)
    resp = service.stub.Embed(request, timeout=30)
    return [np.array(e.values, dtype=np.float32).reshape(e.rows, resp.dimensions) for e in resp.embeddings]


@pytest.mark.parametrize("input_type", [pb.INPUT_TYPE_QUERY, pb.INPUT_TYPE_DOCUMENT])
def test_queries_and_documents_match_pylate(service: Served, folder: Path, input_type: int) -> None:
    is_query = input_type == pb.INPUT_TYPE_QUERY
    worst = 0.0
    for text in TEXTS:  # alone
        [got], [want] = embed(service, [text], input_type), reference(folder, [text], is_query)
        assert got.shape == want.shape
        worst = max(worst, float(np.abs(got - want).max()))
    for got, want in zip(embed(service, TEXTS, input_type), reference(folder, TEXTS, is_query)):  # mixed lengths
        assert got.shape == want.shape
        worst = max(worst, float(np.abs(got - want).max()))
    print(f"pylate colbert {'query' if is_query else 'document'} max abs diff: {worst}")
    assert worst <= TOL


def test_queries_expand_to_query_length_and_documents_drop_punctuation(service: Served) -> None:
    queries = embed(service, TEXTS, pb.INPUT_TYPE_QUERY)
    assert [q.shape[0] for q in queries] == [12, 12, 12]  # expanded, or cut, to query_length
    documents = embed(service, ["who, what? yes."], pb.INPUT_TYPE_DOCUMENT)
    assert documents[0].shape[0] == 6  # [CLS] [D] who , what ? yes . [SEP] without the punctuation
    unspecified = embed(service, TEXTS[:1], pb.INPUT_TYPE_UNSPECIFIED)
    assert np.array_equal(unspecified[0], embed(service, TEXTS[:1], pb.INPUT_TYPE_DOCUMENT)[0])


@pytest.mark.filterwarnings("ignore::FutureWarning")  # PyLate calls sentence-transformers 5 names
def test_pylate_still_cannot_load_here(folder: Path) -> None:
    models = pytest.importorskip("pylate.models")
    with pytest.raises(KeyError, match="activation_function"):
        models.ColBERT(model_name_or_path=str(folder), device="cpu", trust_remote_code=True)


def test_token_ids_and_left_cuts_are_refused_naming_the_input(service: Served) -> None:
    """PyLate's marker, query expansion and query length apply to ids its tokenizer made: token ids
    and a left cut are refused; Tokenize reports the cut a document gets."""
    cases = [
        ([pb.Input(text="x"), pb.Input(tokens=pb.TokenIds(ids=[101, 7, 102]))], {}, "inputs[1]: model colbertv2"),
        ([pb.Input(text="x")], {"truncation_side": pb.TRUNCATION_SIDE_LEFT}, "cuts texts on the right only"),
    ]
    for inputs, options, needle in cases:
        with pytest.raises(grpc.RpcError) as err:
            service.stub.Embed(pb.EmbedRequest(model="colbertv2", inputs=inputs, **options), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and needle in err.value.details()
    told = service.stub.Tokenize(pb.TokenizeRequest(model="colbertv2", inputs=[TEXTS[2] * 3]), timeout=30).results[0]
    assert told.truncated and len(told.tokens) == 39  # document_length 40, one short for the [D] marker
