"""Models that cannot be served right are refused, visibly: a renamed weight, a missing head, a
checkpoint of another architecture, a tokenizer whose package is absent. Each worker exits 2 with
the reason; ListModels shows the model FAILED with it, health says NOT_SERVING, and callers get
FAILED_PRECONDITION naming the model and the reason, until a worker of it serves again."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from embedstream import keys
from embedstream.v1 import embedder_pb2 as pb
from tests.support import familymodels as fm
from tests.support.conformance import FamilyModels, Served
from tests.support.processes import Proc, start_worker, wait_until

RENAMED = ("encoder.layers.0.mlp.fc11.weight", "encoder.layers.0.mlp.fc99.weight")
#: model -> words its refusal must hold
REASONS = {
    "renamed-weight": ["missing weights layers.0.mlp.up_proj.weight", "unexpected weights layers.0.mlp.fc99.weight"],
    "bge-m3-as-sparse": ["XLMRobertaForMaskedLM", "missing weights lm_head"],
    "jina-v3-as-xlm-roberta": ["XLMRobertaModel", "missing weights", "unexpected weights", "mixer"],
    "tokenizer-package-missing": ["needs the Python package 'rjieba'", "not installed"],
}


@pytest.fixture(scope="module")
def refused(family_models: FamilyModels, serve: Callable[..., Served]) -> Served:
    renamed = family_models.get("nomic-renamed", fm.nomic)
    fm.rename_weight(renamed, *RENAMED)
    tokenizer = family_models.get("bert-cpmant-tokenizer", lambda d: fm.bert_st(d, "mean"))
    fm.set_json(tokenizer / "tokenizer_config.json", tokenizer_class="CpmAntTokenizer")  # needs rjieba, absent here
    models: dict[str, dict[str, object]] = {
        "renamed-weight": {"family": "text-dense", "path": str(renamed)},
        "bge-m3-as-sparse": {"family": "sparse", "path": str(family_models.get("bge-m3-like", fm.xlm_roberta))},
        "jina-v3-as-xlm-roberta": {
            "family": "text-dense",
            "path": str(family_models.get("jina-v3-like", fm.jina_v3_remote)),
        },
        "tokenizer-package-missing": {"family": "text-dense", "path": str(tokenizer)},
    }
    served = serve(models, start=[])
    workers = {name: Proc(f"worker-{name}", ["worker", "--model", name], served.env, served.logs) for name in models}
    for name, proc in workers.items():
        proc.proc.wait(timeout=180)
        proc.stop()  # it has exited: this closes its log
        served.workers[name] = proc
    return served


@pytest.mark.parametrize("model", list(REASONS))
def test_a_model_that_does_not_load_completely_exits_2_with_the_reason(refused: Served, model: str) -> None:
    proc = refused.workers[model]
    assert proc.proc.returncode == 2, proc.log()
    log = " ".join(proc.log().split())
    assert f"model {model}" in log and all(words in log for words in REASONS[model]), log


@pytest.mark.parametrize("model", list(REASONS))
def test_list_models_health_and_callers_see_the_failure(refused: Served, r: redis.Redis, model: str) -> None:
    assert r.ttl(keys.load_failure(model)) > 0
    wait_until(lambda: refused.models()[model].state == pb.MODEL_STATE_FAILED, 10, what="failed state")
    info = refused.models()[model]
    assert not info.serving and all(words in " ".join(info.failure.split()) for words in REASONS[model])
    with grpc.insecure_channel(f"127.0.0.1:{refused.port}") as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=model), timeout=5)
    assert status.status == health_pb2.HealthCheckResponse.NOT_SERVING
    with pytest.raises(grpc.RpcError) as caught:
        refused.stub.Embed(pb.EmbedRequest(model=model, inputs=[pb.Input(text="hello")]), timeout=10)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    message = " ".join((caught.value.details() or "").split())
    assert f"model {model!r} failed to load" in message and REASONS[model][0] in message


def test_a_worker_that_serves_the_model_clears_its_failure(
    refused: Served, family_models: FamilyModels, r: redis.Redis
) -> None:
    fm.rename_weight(family_models.get("nomic-renamed", fm.nomic), *reversed(RENAMED))
    worker = start_worker(refused.env, refused.logs, "renamed-weight", r)
    try:
        wait_until(lambda: refused.models()["renamed-weight"].state == pb.MODEL_STATE_SERVING, 15, what="serving")
        assert not refused.models()["renamed-weight"].failure and r.get(keys.load_failure("renamed-weight")) is None
        assert refused.embed("renamed-weight", ["hello"]).shape == (1, 32)
    finally:
        worker.stop()
