"""Models a worker runs, behind one small interface: tokenize, then forward.

:class:`SentenceTransformerModel` loads a local sentence-transformers folder
(``modules.json``: Transformer, Pooling, optional Dense, optional Normalize)
with plain transformers + torch and reproduces ``SentenceTransformer.encode``.
:class:`DebugModel` (test-only, never in the default registry) gives vectors
from a hash of the text at zero compute cost: the pipeline's own ceiling.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from embedstream.errors import ConfigError
from embedstream.registry import ModelSpec

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Tokens:
    """One text after tokenization: ids for the model, real length, whether cut."""

    ids: list[int] | None
    length: int
    truncated: bool
    text: str


class Model(Protocol):
    """What the batcher needs from any model family."""

    name: str
    family: str
    dimensions: int
    max_input_tokens: int
    normalizes: bool

    def tokenize(self, texts: list[str]) -> list[Tokens]:
        """Tokenize with truncation at ``max_input_tokens``; runs on the prep thread."""
        ...

    def forward(self, batch: list[Tokens], normalize: list[bool]) -> np.ndarray:
        """Vectors (len(batch), dimensions) float32; runs on the model thread."""
        ...


def load(spec: ModelSpec, threads: int) -> Model:
    """Load the model a registry entry names."""
    if spec.family == "debug":
        return DebugModel(spec)
    return SentenceTransformerModel(spec, threads)


#: A debug-model input containing this raises inside forward: a poison input for tests.
DEBUG_RAISE = "__embedstream_debug_raise__"


class DebugModel:
    """Deterministic vectors from a hash of each text; no compute, optional latency.

    Test-only: an input containing :data:`DEBUG_RAISE` makes the batch fail.
    """

    family = "debug"

    def __init__(self, spec: ModelSpec) -> None:
        self.name = spec.name
        self.dimensions = spec.dimensions
        self.max_input_tokens = spec.max_input_tokens
        self.normalizes = True
        self.latency_s = spec.latency_ms / 1000.0

    def tokenize(self, texts: list[str]) -> list[Tokens]:
        """Count whitespace words (+2 special tokens) as the token length."""
        out = []
        for text in texts:
            n = len(text.split()) + 2
            out.append(Tokens(None, min(n, self.max_input_tokens), n > self.max_input_tokens, text))
        return out

    def forward(self, batch: list[Tokens], normalize: list[bool]) -> np.ndarray:
        """Hash each text into a vector; sleep ``latency_ms`` once per batch."""
        if self.latency_s:
            time.sleep(self.latency_s)
        if any(DEBUG_RAISE in t.text for t in batch):
            raise RuntimeError("debug model asked to fail")
        return debug_vectors([t.text for t in batch], self.dimensions, normalize)


def debug_vectors(texts: list[str], dimensions: int, normalize: list[bool]) -> np.ndarray:
    """The debug model's vectors; tests use this to check what came back."""
    raw = b"".join(hashlib.shake_128(t.encode()).digest(dimensions) for t in texts)
    vecs = np.frombuffer(raw, dtype=np.int8).reshape(len(texts), dimensions).astype(np.float32)
    vecs /= 128.0
    norms = np.linalg.norm(vecs, axis=1, keepdims=True)
    scale = np.where(np.asarray(normalize)[:, None], 1.0 / np.maximum(norms, 1e-12), 1.0)
    return (vecs * scale).astype(np.float32)


_POOLING_FLAGS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_lasttoken": "lasttoken",
}
_ACTIVATIONS = ("Identity", "Tanh", "ReLU", "GELU", "Sigmoid")


class SentenceTransformerModel:
    """A sentence-transformers folder run with transformers + torch directly."""

    family = "text-dense"

    def __init__(self, spec: ModelSpec, threads: int) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        torch.set_num_threads(threads)
        self._torch = torch
        root = Path(spec.path)
        modules = _read_json(root / "modules.json", spec.name)
        kinds = [str(m["type"]).rsplit(".", 1)[-1] for m in modules]
        if not kinds or kinds[0] != "Transformer":
            raise ConfigError(f"model {spec.name}: modules.json must start with a Transformer, got {kinds}")
        allowed = {"Transformer", "Pooling", "Dense", "Normalize"}
        if set(kinds) - allowed:
            raise ConfigError(f"model {spec.name}: unsupported module(s) {sorted(set(kinds) - allowed)}")
        if "Pooling" not in kinds:
            raise ConfigError(f"model {spec.name}: modules.json has no Pooling module")
        tdir = root / modules[0]["path"]
        st_cfg = _read_json_optional(tdir / "sentence_bert_config.json")
        self.name = spec.name
        self.device = torch.device(spec.device)
        if self.device.type == "cuda":
            # cuDNN's attention builds an execution plan per new (batch, length)
            # shape, ~50 ms each on an H200: with batches of every shape that
            # made MiniLM 10x slower. Flash / memory-efficient kernels need none.
            torch.backends.cuda.enable_cudnn_sdp(False)
        # Few distinct widths keep accelerator kernels warm; CPU pays per token.
        self._width_multiple = 1 if self.device.type == "cpu" else 8
        self.tokenizer = AutoTokenizer.from_pretrained(str(tdir))
        dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[spec.dtype]
        self.model = AutoModel.from_pretrained(str(tdir), dtype=dtype).to(self.device).eval()
        positions = int(getattr(self.model.config, "max_position_embeddings", 0) or 0) or 10**9
        limit = st_cfg.get("max_seq_length") or min(self.tokenizer.model_max_length, positions)
        self.max_input_tokens = int(spec.max_input_tokens or limit)
        self.lower = bool(st_cfg.get("do_lower_case", False))
        self.pooling = _pooling_mode(
            _read_json(root / modules[kinds.index("Pooling")]["path"] / "config.json", spec.name)
        )
        self.dense = [self._load_dense(root / m["path"], spec.name) for m, k in zip(modules, kinds) if k == "Dense"]
        self.normalizes = "Normalize" in kinds
        self._backend = self.tokenizer.backend_tokenizer.__class__.from_str(self.tokenizer.backend_tokenizer.to_str())
        self._backend.enable_truncation(self.max_input_tokens)
        self._backend.no_padding()
        self._pad_id = int(self.tokenizer.pad_token_id or 0)
        self._type_ids = "token_type_ids" in self.tokenizer.model_input_names
        self.dimensions = self._probe_dimensions()

    def tokenize(self, texts: list[str]) -> list[Tokens]:
        """Fast-tokenizer ids, cut at max_input_tokens; ``overflowing`` marks a cut."""
        if self.lower:
            texts = [t.lower() for t in texts]
        encodings = self._backend.encode_batch(texts)
        return [Tokens(e.ids, len(e.ids), bool(e.overflowing), t) for e, t in zip(encodings, texts)]

    def forward(self, batch: list[Tokens], normalize: list[bool]) -> np.ndarray:
        """Pad to the longest in the batch, run the encoder, pool, dense, normalize."""
        torch = self._torch
        width = -(-max(t.length for t in batch) // self._width_multiple) * self._width_multiple
        ids = np.full((len(batch), width), self._pad_id, dtype=np.int64)
        mask = np.zeros((len(batch), width), dtype=np.int64)
        for row, tok in enumerate(batch):
            ids[row, : tok.length] = tok.ids or []
            mask[row, : tok.length] = 1
        with torch.inference_mode():
            inputs: dict[str, Any] = {
                "input_ids": torch.from_numpy(ids).to(self.device),
                "attention_mask": torch.from_numpy(mask).to(self.device),
            }
            if self._type_ids:
                inputs["token_type_ids"] = torch.zeros_like(inputs["input_ids"])
            hidden = self.model(**inputs).last_hidden_state
            vecs = self._pool(hidden, inputs["attention_mask"])
            for linear, act in self.dense:
                vecs = act(linear(vecs))
            want = torch.tensor(normalize, device=vecs.device)[:, None]
            vecs = torch.where(want, torch.nn.functional.normalize(vecs, p=2, dim=1), vecs)
            out: np.ndarray = vecs.float().cpu().numpy()
            return out

    def _pool(self, hidden: Any, mask: Any) -> Any:
        torch = self._torch
        if self.pooling == "cls":
            return hidden[:, 0]
        m = mask.unsqueeze(-1).to(hidden.dtype)
        if self.pooling == "max":
            return hidden.masked_fill(m == 0, -1e9).max(dim=1).values
        if self.pooling == "lasttoken":
            last = mask.sum(dim=1) - 1
            return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        summed = (hidden * m).sum(dim=1)
        counts = m.sum(dim=1).clamp(min=1e-9)
        if self.pooling == "mean_sqrt_len_tokens":
            return summed / counts.sqrt()
        return summed / counts

    def _load_dense(self, folder: Path, name: str) -> tuple[Any, Any]:
        torch = self._torch
        cfg = _read_json(folder / "config.json", name)
        act_name = str(cfg.get("activation_function", "Identity")).rsplit(".", 1)[-1]
        if act_name not in _ACTIVATIONS:
            raise ConfigError(f"model {name}: Dense activation {act_name!r} is not supported")
        linear = torch.nn.Linear(cfg["in_features"], cfg["out_features"], bias=cfg.get("bias", True))
        if (folder / "model.safetensors").exists():
            from safetensors.torch import load_file

            state = load_file(str(folder / "model.safetensors"))
        else:
            state = torch.load(str(folder / "pytorch_model.bin"), map_location="cpu", weights_only=True)
        linear.load_state_dict({k.removeprefix("linear."): v for k, v in state.items()})
        linear = linear.to(self.device, dtype=next(self.model.parameters()).dtype).eval()
        return linear, getattr(torch.nn, act_name)()

    def _probe_dimensions(self) -> int:
        probe = Tokens([self._pad_id, self._pad_id], 2, False, "")
        return int(self.forward([probe], [False]).shape[1])


def _pooling_mode(cfg: dict[str, Any]) -> str:
    if "pooling_mode" in cfg:
        mode = str(cfg["pooling_mode"])
    else:
        modes = [mode for key, mode in _POOLING_FLAGS.items() if cfg.get(key)]
        if len(modes) != 1:
            raise ConfigError(f"pooling must use exactly one mode, found {modes or 'none'}")
        mode = modes[0]
    if mode not in set(_POOLING_FLAGS.values()):
        raise ConfigError(f"pooling mode {mode!r} is not supported")
    return mode


def _read_json(path: Path, name: str) -> Any:
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"model {name}: cannot read {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"model {name}: {path} is not JSON: {exc}") from None


def _read_json_optional(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}
