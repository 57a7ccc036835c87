"""The worker's model loader equals sentence-transformers on real and tiny models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from embedstream.errors import ConfigError
from embedstream.registry import ModelSpec
from embedstream.workers.debug import debug_vectors
from embedstream.workers.text import SentenceTransformerModel
from tests.support import tinymodels
from tests.support.models import MINILM

TEXTS = ["hello world", "Ünïcode and emoji 🚀 text", "a " * 300, "Mixed CASE words.", "x"]


def encode_both(path: str) -> tuple[np.ndarray, np.ndarray, SentenceTransformerModel]:
    from sentence_transformers import SentenceTransformer

    ours = SentenceTransformerModel(ModelSpec(name="m", family="text-dense", path=path), threads=1)
    tokens = ours.tokenize(TEXTS)
    got = ours.forward(tokens, [ours.normalizes] * len(TEXTS))
    return got, SentenceTransformer(path, device="cpu").encode(TEXTS), ours


def test_minilm_matches_sentence_transformers() -> None:
    got, ref, model = encode_both(MINILM)
    assert (model.dimensions, model.max_input_tokens, model.normalizes) == (384, 256, True)
    assert np.abs(got - ref).max() <= 1e-5


@pytest.mark.parametrize(
    ("pooling", "dense", "normalize"),
    [("mean", False, True), ("cls", True, True), ("max", False, False), ("lasttoken", True, False)],
)
def test_tiny_models_match_sentence_transformers(tmp_path: Path, pooling: str, dense: bool, normalize: bool) -> None:
    folder = tinymodels.sentence_transformer(tmp_path / "st", pooling, dense, normalize, max_seq_length=48)
    got, ref, model = encode_both(str(folder))
    assert model.dimensions == (16 if dense else 32)
    assert model.max_input_tokens == 48
    assert model.normalizes == normalize
    assert np.abs(got - ref).max() <= 1e-5


def test_truncation_is_flagged() -> None:
    model = SentenceTransformerModel(ModelSpec(name="m", family="text-dense", path=MINILM), threads=1)
    short, long = model.tokenize(["short text", "word " * 400])
    assert not short.truncated and long.truncated and long.length == 256


def test_unsupported_module_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "modules.json").write_text('[{"idx": 0, "name": "0", "path": "", "type": "x.models.Quantum"}]')
    with pytest.raises(ConfigError, match="Transformer"):
        SentenceTransformerModel(ModelSpec(name="m", family="text-dense", path=str(tmp_path)), threads=1)


def test_missing_folder_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not a folder"):
        SentenceTransformerModel(ModelSpec(name="m", family="text-dense", path=str(tmp_path / "no")), threads=1)


def test_debug_vectors_are_deterministic_and_normalized() -> None:
    a = debug_vectors(["x", "y"], 16, [True, False])
    assert np.array_equal(a, debug_vectors(["x", "y"], 16, [True, False]))
    assert abs(np.linalg.norm(a[0]) - 1) < 1e-6 and not np.array_equal(a[0], a[1])


@pytest.mark.parametrize("family", ["text-dense", "image-text", "sparse", "multi-vector", "rerank"])
def test_a_hub_id_without_internet_is_a_config_error_naming_the_model(family: str) -> None:
    from embedstream.workers.loader import load

    spec = ModelSpec(name="hubbed", family=family, path="hf:nobody-here/no-such-model")
    with pytest.raises(ConfigError, match=r"model hubbed: cannot load hf:nobody-here/no-such-model \(HF_HUB_OFFLINE"):
        load(spec, threads=1)
