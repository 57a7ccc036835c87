"""Jina Embeddings v3 served through gateway, Redis and worker equals transformers' JinaEmbeddingsV3Model
with the task's LoRA adapter active, for every task, alone and in mixed-length batches.

A tiny JinaEmbeddingsV3Model is saved as the real folder is (original weight names, XLM-R SentencePiece
tokenizer, ``lora_adaptations``/``task_instructions``/``matryoshka_dimensions``, a PEFT adapter per task).
transformers' own ``load_adapter`` needs peft >= 0.22, which is not published yet; the reference is what
it does underneath: ``PeftModel.from_pretrained(model, adapter folder)``, then mean pooling and L2
normalisation as the model card computes them.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import redis

from embedstream.v1 import embedder_pb2 as pb
from tests.support import tinyheads
from tests.support.conformance import TEXTS, Served, assert_close, check_single_and_batched
from tests.support.processes import entries_added

MODEL = "jina-v3"


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tinyheads.jina_v3(tmp_path_factory.mktemp("jina") / "jina-embeddings-v3")


@pytest.fixture(scope="module")
def service(serve: Callable[..., Served], folder: Path) -> Served:
    return serve({MODEL: {"family": "text-dense", "path": str(folder)}})


def reference(folder: Path, task: str | None, texts: list[str], dimensions: int = 0) -> np.ndarray:
    """The model card's embedding: instruction + text, the task's adapter, mean pooling, (cut,) L2-normalise."""
    import torch
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = tinyheads.jina_v3_reference(folder, task)
    prefix = tinyheads.JINA_TASKS[task] if task else ""
    encoded = tokenizer([prefix + t for t in texts], padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**encoded)[0]
    mask = encoded["attention_mask"][..., None].float()
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    if dimensions:
        pooled = pooled[:, :dimensions]
    out: np.ndarray = torch.nn.functional.normalize(pooled, dim=-1).numpy()
    return out


@pytest.mark.parametrize("task", list(tinyheads.JINA_TASKS))
def test_every_task_matches_transformers_with_its_adapter(service: Served, folder: Path, task: str) -> None:
    check_single_and_batched(service, MODEL, reference(folder, task, TEXTS), f"jina-v3 {task}", prompt_name=task)


def test_input_types_select_the_retrieval_tasks_and_none_means_no_adapter(service: Served, folder: Path) -> None:
    query = service.embed(MODEL, TEXTS, input_type=pb.INPUT_TYPE_QUERY)
    assert_close(query, reference(folder, "retrieval.query", TEXTS), "jina-v3 input_type query")
    document = service.embed(MODEL, TEXTS, input_type=pb.INPUT_TYPE_DOCUMENT)
    assert_close(document, reference(folder, "retrieval.passage", TEXTS), "jina-v3 input_type document")
    plain = service.embed(MODEL, TEXTS)
    assert_close(plain, reference(folder, None, TEXTS), "jina-v3 no task (base model)")
    # The adapters are real: each task moves every vector away from the base model's.
    assert min(float(np.abs(v - plain).max()) for v in (query, document)) > 0.05


def test_requests_of_different_tasks_in_flight_together(service: Served, folder: Path) -> None:
    """Calls of every task in flight at once (the worker may batch them together) each get their own adapter."""
    tasks = [*tinyheads.JINA_TASKS, None] * 2
    calls = []
    for i, task in enumerate(tasks):
        text = TEXTS[i % len(TEXTS)]
        request = pb.EmbedRequest(model=MODEL, inputs=[pb.Input(text=text)], prompt_name=task or "")
        calls.append((task, text, service.stub.Embed.future(request, timeout=60)))
    for task, text, call in calls:
        got = np.array([list(call.result().embeddings[0].values)], dtype=np.float32)
        assert_close(got, reference(folder, task, [text]), f"jina-v3 concurrent {task}")


def test_one_forward_pass_mixes_tasks_row_by_row(folder: Path) -> None:
    """The worker's model itself: one padded batch whose rows name different tasks (and none)."""
    from embedstream.registry import ModelSpec
    from embedstream.workers.loader import load

    model = load(ModelSpec(name="jina", family="text-dense", path=str(folder)), threads=1)
    tasks = [*tinyheads.JINA_TASKS, None]
    texts = [TEXTS[i % len(TEXTS)] for i in range(len(tasks))]
    tokens = model.tokenize([(tinyheads.JINA_TASKS[t] if t else "") + text for t, text in zip(tasks, texts)])
    for tok, task in zip(tokens, tasks):
        tok.prompt = task or ""
    got = model.forward(tokens, [True] * len(tokens))
    want = np.concatenate([reference(folder, task, [text]) for task, text in zip(tasks, texts)])
    assert_close(np.asarray(got), want, "jina-v3 one mixed batch")


def test_matryoshka_sizes_come_from_the_folder(service: Served, folder: Path) -> None:
    info = service.models()[MODEL]
    assert list(info.capabilities.matryoshka_dimensions) == [16, 8, 4]
    assert set(info.capabilities.prompts) == set(tinyheads.JINA_TASKS)
    assert info.capabilities.query_prompt == "retrieval.query"
    assert info.capabilities.document_prompt == "retrieval.passage"
    assert info.profile.pooling == "mean" and info.profile.architecture == "jina_embeddings_v3"
    got = service.embed(MODEL, TEXTS, prompt_name="separation", dimensions=8)
    assert_close(got, reference(folder, "separation", TEXTS, dimensions=8), "jina-v3 matryoshka 8")


def test_a_task_the_model_lacks_is_refused_naming_prompt_name(service: Served, r: redis.Redis) -> None:
    before = entries_added(r, MODEL)
    request = pb.EmbedRequest(model=MODEL, inputs=[pb.Input(text="x")], prompt_name="retrieval.code")
    with pytest.raises(grpc.RpcError) as err:
        service.stub.Embed(request, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("prompt_name: model 'jina-v3'") and "retrieval.code" in err.value.details()
    assert entries_added(r, MODEL) == before


def _copy(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / "jina"))


@pytest.mark.parametrize("damage", ["no adapter folder", "renamed adapter weight"])
def test_a_folder_missing_an_adapter_or_its_weights_is_refused(folder: Path, tmp_path: Path, damage: str) -> None:
    from safetensors.torch import load_file, save_file

    from embedstream.errors import ConfigError
    from embedstream.registry import ModelSpec
    from embedstream.workers.loader import load

    broken = _copy(folder, tmp_path)
    file = broken / "text_matching" / "adapter_model.safetensors"
    if damage == "no adapter folder":
        shutil.rmtree(broken / "text_matching")
        needle = "task 'text-matching' has no LoRA adapter"
    else:
        state: dict[str, Any] = load_file(str(file))
        key = next(k for k in state if "q_proj.lora_A" in k)
        state[key.replace("q_proj", "qq_proj")] = state.pop(key)
        save_file(state, str(file))
        needle = "missing weights base_model.model.layers"
    with pytest.raises(ConfigError, match="model jina: ") as err:
        load(ModelSpec(name="jina", family="text-dense", path=str(broken)), threads=1)
    assert needle in str(err.value)


def test_tokenize_and_token_ids_take_the_adapter_of_the_input_type(service: Served, folder: Path) -> None:
    """Token ids (the instruction's included, as for any prompt) run through the adapter the input
    type selects; Tokenize gives the tokenizer's own ids."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    told = service.stub.Tokenize(pb.TokenizeRequest(model=MODEL, inputs=TEXTS), timeout=30).results
    assert [[t.id for t in r.tokens] for r in told] == [tokenizer(t)["input_ids"] for t in TEXTS]
    ids = [tokenizer(tinyheads.JINA_TASKS["retrieval.query"] + t)["input_ids"] for t in TEXTS]
    request = pb.EmbedRequest(
        model=MODEL, inputs=[pb.Input(tokens=pb.TokenIds(ids=i)) for i in ids], input_type=pb.INPUT_TYPE_QUERY
    )
    got = np.array([list(e.values) for e in service.stub.Embed(request, timeout=30).embeddings], dtype=np.float32)
    assert_close(got, reference(folder, "retrieval.query", TEXTS), "jina-v3 token ids, retrieval.query")
