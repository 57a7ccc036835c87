"""The family factory: the model a registry entry names, loaded through its family's module."""

from __future__ import annotations

from embedstream.errors import ConfigError
from embedstream.registry import HUB_SCHEME, ModelSpec
from embedstream.workers import onnxengine, selftest, strict
from embedstream.workers.causal_rerank import CausalRerankModel, is_causal
from embedstream.workers.clap import ClapAudioModel
from embedstream.workers.classify import SequenceClassifier
from embedstream.workers.clip import load_image_text
from embedstream.workers.colbert import ColbertModel
from embedstream.workers.debug import DebugModel
from embedstream.workers.jina import JinaV3Model, is_jina_v3
from embedstream.workers.m3 import BgeM3Model, is_m3
from embedstream.workers.model import Model
from embedstream.workers.onnxtext import OnnxSentenceModel
from embedstream.workers.pylate_colbert import PylateColbertModel, is_pylate
from embedstream.workers.rerank import CrossEncoderModel
from embedstream.workers.sparse import SpladeModel
from embedstream.workers.text import SentenceTransformerModel


def load(
    spec: ModelSpec, threads: int, image_limits: tuple[int, int] = (8 << 20, 25_000_000), onnx_cache: str = ""
) -> Model:
    """Load the model a registry entry names; images above ``image_limits`` (bytes, pixels) are refused;
    ``onnx_cache`` holds the onnx engine's graphs (:mod:`embedstream.workers.onnxengine`).

    A folder the loaders cannot read, or a hub id without internet, is a :class:`ConfigError` naming the model.
    """
    try:
        model = _load(spec, threads, image_limits, onnx_cache)
    except ConfigError:
        raise
    except ImportError as exc:
        raise strict.missing_package(spec.name, exc) from None
    except RuntimeError as exc:  # torch's load_state_dict and shape checks
        raise ConfigError(f"model {spec.name}: cannot load {spec.path}: {exc}") from None
    except (OSError, ValueError, KeyError) as exc:
        offline = (
            " (HF_HUB_OFFLINE=1: hub ids need internet and HF_HUB_OFFLINE=0)"
            if spec.path.startswith(HUB_SCHEME)
            else ""
        )
        raise ConfigError(f"model {spec.name}: cannot load {spec.path}{offline}: {exc}") from None
    selftest.check(spec, model)
    return model


def _load(spec: ModelSpec, threads: int, image_limits: tuple[int, int], onnx_cache: str) -> Model:
    if spec.family == "debug":
        return DebugModel(spec)
    if spec.family == "image-text":
        model: Model = load_image_text(spec, threads, image_limits)
        return model
    if spec.family == "audio-text":
        return ClapAudioModel(spec, threads)
    if spec.family == "sparse":
        return SpladeModel(spec, threads)
    if spec.family == "multi-vector":
        local = not spec.path.startswith(HUB_SCHEME)
        return PylateColbertModel(spec, threads) if local and is_pylate(spec.path) else ColbertModel(spec, threads)
    if spec.family == "rerank":
        if not spec.path.startswith(HUB_SCHEME) and is_causal(spec.path):
            return CausalRerankModel(spec, threads)
        return CrossEncoderModel(spec, threads)
    if spec.family == "classify":
        return SequenceClassifier(spec, threads)
    if is_jina_v3(spec):
        return JinaV3Model(spec, threads)
    if spec.outputs not in ((), ("dense",)) or (not spec.path.startswith(HUB_SCHEME) and is_m3(spec.path)):
        return BgeM3Model(spec, threads)
    if onnxengine.resolve(spec, onnx_cache).engine == "onnx":
        return OnnxSentenceModel(spec, threads, onnx_cache)
    return SentenceTransformerModel(spec, threads)
