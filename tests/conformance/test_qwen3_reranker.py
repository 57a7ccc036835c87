"""Qwen3-Reranker served through gateway, Redis and worker equals the model card's formula.

A tiny Qwen3ForCausalLM with a Qwen2 BPE tokenizer (its chat tokens added); the
reference is the card's code: prefix + ``<Instruct>/<Query>/<Document>`` + suffix,
left padding, P("yes") from the last position's yes/no logits.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from embedstream.v1 import embedder_pb2 as pb
from tests.support import tinyheads
from tests.support.conformance import Served

QUERY = "what do embedding models do?"
DOCS = ["a photo of a cat", "Redis streams hold the queue.", "embedding models turn text into vectors, fast! " * 5]
TOL = 1e-4
CARD_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct "
    'provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
)
CARD_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
TASK = "Given a web search query, retrieve relevant passages that answer the query"
CODE_TASK = "Given a code question, retrieve code that answers it"


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tinyheads.qwen3_reranker(tmp_path_factory.mktemp("qwen3") / "Qwen3-Reranker")


@pytest.fixture(scope="module")
def service(serve: Callable[..., Served], folder: Path) -> Served:
    return serve(
        {
            "qwen3-reranker": {"family": "rerank", "path": str(folder)},
            "qwen3-reranker-code": {"family": "rerank", "path": str(folder), "instruction": CODE_TASK},
        }
    )


def card_scores(folder: Path, query: str, docs: list[str], task: str = TASK) -> np.ndarray:
    """The model card's compute_logits on one left-padded batch."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    prefix = tok.encode(CARD_PREFIX, add_special_tokens=False)
    suffix = tok.encode(CARD_SUFFIX, add_special_tokens=False)
    pairs = [f"<Instruct>: {task}\n<Query>: {query}\n<Document>: {doc}" for doc in docs]
    room = 8192 - len(prefix) - len(suffix)
    inputs = tok(pairs, padding=False, truncation="longest_first", return_attention_mask=False, max_length=room)
    inputs["input_ids"] = [prefix + ids + suffix for ids in inputs["input_ids"]]
    batch = tok.pad(inputs, padding=True, return_tensors="pt")
    with torch.no_grad():
        last = model(**batch).logits[:, -1, :]
    no, yes = tok.convert_tokens_to_ids("no"), tok.convert_tokens_to_ids("yes")
    return torch.nn.functional.log_softmax(torch.stack([last[:, no], last[:, yes]], dim=1), dim=1)[:, 1].exp().numpy()


def test_scores_match_the_model_cards_formula(service: Served, folder: Path) -> None:
    worst = 0.0
    for doc in DOCS:  # alone
        resp = service.stub.Rerank(pb.RerankRequest(model="qwen3-reranker", query=QUERY, documents=[doc]), timeout=30)
        worst = max(worst, abs(resp.results[0].score - float(card_scores(folder, QUERY, [doc])[0])))
    want = card_scores(folder, QUERY, DOCS)  # mixed lengths, left-padded by the card's code
    resp = service.stub.Rerank(pb.RerankRequest(model="qwen3-reranker", query=QUERY, documents=DOCS), timeout=30)
    assert [r.index for r in resp.results] == np.argsort(-want, kind="stable").tolist()
    worst = max(worst, max(abs(r.score - float(want[r.index])) for r in resp.results))
    print(f"qwen3-reranker max abs diff: {worst}")
    assert worst <= TOL


def test_the_registry_instruction_replaces_the_cards_default(service: Served, folder: Path) -> None:
    resp = service.stub.Rerank(pb.RerankRequest(model="qwen3-reranker-code", query=QUERY, documents=DOCS), timeout=30)
    want = card_scores(folder, QUERY, DOCS, CODE_TASK)
    assert max(abs(r.score - float(want[r.index])) for r in resp.results) <= TOL
    assert max(abs(r.score - float(card_scores(folder, QUERY, DOCS)[r.index])) for r in resp.results) > 1e-4


def test_a_causal_reranker_is_refused_for_embed(service: Served) -> None:
    with pytest.raises(grpc.RpcError) as err:
        service.stub.Embed(pb.EmbedRequest(model="qwen3-reranker", inputs=[pb.Input(text="x")]), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "call Rerank" in err.value.details()


def test_a_left_cut_is_refused_and_tokenize_gives_the_tokenizers_ids(service: Served, folder: Path) -> None:
    """A left cut would drop the card's instruction and the query: refused, naming the document."""
    from transformers import AutoTokenizer

    request = pb.RerankRequest(model="qwen3-reranker", query=QUERY, documents=DOCS, truncation_side=1)
    with pytest.raises(grpc.RpcError) as err:
        service.stub.Rerank(request, timeout=10)
    assert (
        err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "cuts pairs on the right only" in err.value.details()
    )
    told = service.stub.Tokenize(pb.TokenizeRequest(model="qwen3-reranker", inputs=[QUERY]), timeout=30).results[0]
    assert [t.id for t in told.tokens] == AutoTokenizer.from_pretrained(folder)(QUERY)["input_ids"]
