"""The onnx engine: which models it serves, its graphs equal sentence-transformers, workers without torch.

The conformance suite serves its tiny BERT folders with ``engine = "onnx"`` too
(tests/conformance/test_sentence_transformers.py); here the default model itself.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from embedstream import registryfile
from embedstream.errors import ConfigError
from embedstream.registry import ModelSpec, builtin
from embedstream.workers import onnxengine
from embedstream.workers.loader import load
from embedstream.workers.onnxtext import OnnxSentenceModel
from embedstream.workers.text import SentenceTransformerModel
from loadtest.corpus import goal_texts
from tests.conftest import Service
from tests.support import familymodels as fm
from tests.support import references


def minilm(**changes: object) -> ModelSpec:
    return dataclasses.replace(builtin().resolve(""), **changes)  # type: ignore[arg-type]


def vectors(model: object, texts: list[str]) -> np.ndarray:
    """Each text alone, then all in one padded batch (longest first, as the batcher sorts)."""
    tokens = model.tokenize(texts)  # type: ignore[attr-defined]
    alone = np.concatenate([model.forward([t], [True]) for t in tokens])  # type: ignore[attr-defined]
    order = sorted(range(len(tokens)), key=lambda i: -tokens[i].length)
    batched = np.empty_like(alone)
    batched[order] = model.forward([tokens[i] for i in order], [True] * len(order))  # type: ignore[attr-defined]
    return np.stack([alone, batched])


def test_the_default_model_runs_on_onnx_and_equals_sentence_transformers(onnx_cache: Path) -> None:
    spec = minilm()
    assert onnxengine.unfit(spec) == ""
    model = load(spec, 2, onnx_cache=str(onnx_cache))
    assert isinstance(model, OnnxSentenceModel) and model.engine == "onnx"
    texts = [*goal_texts(40), "x", "Ünïcödé and emoji 🚀 mixed in", "word " * 400]  # the last is cut at 256
    expected = references.sentence_transformer(Path(spec.path)).encode(texts)
    got = vectors(model, texts)
    assert np.abs(got - expected[None]).max() < 1e-5
    torch_model = load(minilm(engine="torch"), 2)
    assert type(torch_model) is SentenceTransformerModel
    assert np.abs(got - vectors(torch_model, texts)).max() < 1e-5


def test_graphs_are_exported_once_per_weights_and_again_when_they_change(tmp_path: Path, onnx_cache: Path) -> None:
    from safetensors.torch import load_file, save_file

    folder = fm.bert_st(tmp_path / "st", "mean")
    spec = ModelSpec(name="tiny", family="text-dense", path=str(folder))
    first = onnxengine.graph(spec, str(onnx_cache))
    stamp = first.stat().st_mtime_ns
    assert onnxengine.graph(spec, str(onnx_cache)) == first and first.stat().st_mtime_ns == stamp
    copy = shutil.copytree(folder, tmp_path / "copy")  # the same weights elsewhere: the same graph
    assert onnxengine.graph(dataclasses.replace(spec, path=str(copy)), str(onnx_cache)) == first
    weights = copy / "model.safetensors"
    state = load_file(str(weights))
    name = next(k for k in state if k.endswith("embeddings.word_embeddings.weight"))
    state[name] *= 1.5  # one tensor changed
    save_file(state, str(weights), metadata={"format": "pt"})
    changed = dataclasses.replace(spec, path=str(copy))
    second = onnxengine.graph(changed, str(onnx_cache))
    assert second != first and second.exists()
    model = load(changed, 1, onnx_cache=str(onnx_cache))
    text = ["the graph follows the weights"]
    got = model.forward(model.tokenize(text), [True])
    assert np.abs(got - references.sentence_transformer(copy).encode(text)).max() < 1e-5
    assert np.abs(got - references.sentence_transformer(folder).encode(text)).max() > 1e-3


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"dense": True}, "unsupported module(s) ['Dense']"),
        ({"include_prompt": False}, "pooling without the prompt's tokens"),
        ({"pooling": "weightedmean"}, "pooling weightedmean runs on torch"),
    ],
)
def test_what_the_engine_cannot_serve_exactly_runs_on_torch_or_is_refused(
    tmp_path: Path, change: dict[str, object], reason: str
) -> None:
    pooling = str(change.pop("pooling", "mean"))
    folder = fm.bert_st(tmp_path / "st", pooling, **change)
    spec = ModelSpec(name="tiny", family="text-dense", path=str(folder))
    assert reason in onnxengine.unfit(spec)
    assert onnxengine.resolve(spec).engine == "torch"
    assert type(load(spec, 1)) is SentenceTransformerModel
    with pytest.raises(ConfigError, match=f"model tiny: engine onnx cannot serve it: .*{re.escape(reason)}"):
        load(dataclasses.replace(spec, engine="onnx"), 1)


def test_the_registry_names_the_engine_and_refuses_onnx_where_it_cannot_run(tmp_path: Path) -> None:
    def spec(body: str) -> ModelSpec:
        path = tmp_path / "models.toml"
        path.write_text(f'[models.m]\nfamily = "text-dense"\npath = "{tmp_path}"\n{body}\n')
        return registryfile.load(str(path)).resolve("m")

    assert spec("").engine == "auto"
    assert spec('engine = "torch"').engine == "torch"
    with pytest.raises(ConfigError, match=r"models\.m\.engine must be one of \['auto', 'torch', 'onnx'\]"):
        spec('engine = "tensorrt"')
    with pytest.raises(ConfigError, match=r"models\.m\.engine = onnx serves text-dense models on cpu in float32"):
        spec('engine = "onnx"\ndevice = "cuda"')


def test_a_worker_on_the_onnx_engine_never_maps_torch(service: Service) -> None:
    pid = service.workers["all-MiniLM-L6-v2"].proc.pid
    maps = Path(f"/proc/{pid}/maps").read_text()
    assert "onnxruntime" in maps
    assert "libtorch" not in maps and "/torch/" not in maps
