"""``embedstream inspect FOLDER``: how a folder would be served, without serving it.

Loads the folder through the same loader a worker uses (strict weights, the
self-test) and prints its profile: family, loader, pooling, normalization,
prompts, Matryoshka sizes, heads found, max tokens. A folder the service would
refuse exits 2 with the reason, exactly as its worker would.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from embedstream import registryfile
from embedstream.errors import ConfigError
from embedstream.settings import Settings
from embedstream.workers.profiles import describe


def run(settings: Settings, folder: str, family: str = "", instruction: str = "") -> int:
    """Print how ``folder`` would be served as ``family`` (detected when empty); the ``inspect`` command."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    path = Path(folder).expanduser().resolve()
    if not path.is_dir():
        raise ConfigError(f"inspect: {folder} is not a folder")
    raw = {"family": family or detect(path), "path": str(path)}
    if instruction:
        raw["instruction"] = instruction
    spec = registryfile.parse({"models": {path.name or "model": raw}}, Path.cwd()).models[path.name or "model"]
    from transformers.utils import logging as hf_logging

    from embedstream.workers.loader import load

    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    model = load(spec, settings.torch_threads(), onnx_cache=settings.onnx_cache)
    print(f"folder: {path}")
    for line in describe(spec, model).lines():
        print(line)
    print("self-test: passed (finite, declared shape, normalized where it normalizes, same alone and in a batch)")
    return 0


def detect(folder: Path) -> str:
    """The family a folder's files say it is: image-text, sparse, multi-vector, rerank, classify or text-dense."""
    if (folder / "open_clip_config.json").exists():
        return "image-text"
    kinds = []
    if (folder / "modules.json").exists():
        kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in json.loads((folder / "modules.json").read_text())]
    if "SpladePooling" in kinds or "MLMTransformer" in kinds:
        return "sparse"
    if "MultiVectorMask" in kinds:
        return "multi-vector"
    config = folder / "config.json"
    settings = json.loads(config.read_text()) if config.exists() else {}
    names = " ".join(str(a) for a in settings.get("architectures") or [])
    if "ForMaskedLM" in names:
        return "sparse"
    if "ForSequenceClassification" in names:
        # One label scores a (query, document) pair; more are a classifier's labels.
        return "classify" if len(settings.get("id2label") or {0: ""}) > 1 else "rerank"
    if any(a in names for a in ("CLIPModel", "SiglipModel", "Siglip2Model")):
        return "image-text"
    return "text-dense"
