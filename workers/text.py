"""Transformer encoders run with plain transformers + torch, and the text-dense family.

:class:`Encoder` is what every transformer-based family shares: a fast
tokenizer cloned with truncation and no padding (so tokenizing is a stage of its
own), the model on its device and dtype, and padding of a sorted batch to its
longest input. :class:`SentenceTransformerModel` reproduces
``SentenceTransformer.encode`` from a sentence-transformers folder
(``modules.json``: Transformer, Pooling, optional Dense, optional Normalize), or
runs a plain transformers folder with the registry's pooling.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from embedstream.workers.model import Source, Tokens, not_text, read_json, read_json_optional, weights

from embedstream.errors import ConfigError
from embedstream.registry import ModelSpec

_POOLING_FLAGS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_lasttoken": "lasttoken",
}
_ACTIVATIONS = ("Identity", "Tanh", "ReLU", "GELU", "Sigmoid")


def torch_dtype(torch: Any, name: str) -> Any:
    """The torch dtype a registry dtype names."""
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def cut_tokenizer(tokenizer: Any, max_tokens: int) -> Any:
    """A copy of a fast tokenizer's backend that truncates at ``max_tokens`` and never pads:
    the batcher pads each sorted batch to its own longest input."""
    backend = tokenizer.backend_tokenizer
    cut = backend.__class__.from_str(backend.to_str())
    cut.enable_truncation(max_tokens)
    cut.no_padding()
    return cut


def init_torch(spec: ModelSpec, threads: int) -> tuple[Any, Any]:
    """torch with the worker's thread count, and the spec's device."""
    import torch

    torch.set_num_threads(threads)
    device = torch.device(spec.device)
    if device.type == "cuda":
        # cuDNN's attention builds an execution plan per new (batch, length)
        # shape, ~50 ms each on an H200: with batches of every shape that
        # made MiniLM 10x slower. Flash / memory-efficient kernels need none.
        torch.backends.cuda.enable_cudnn_sdp(False)
    return torch, device


class Encoder:
    """A transformers model and its fast tokenizer, ready for sorted, padded batches."""

    family = ""
    output = "dense"

    def __init__(self, spec: ModelSpec, threads: int, folder: str, auto: str = "AutoModel") -> None:
        import transformers

        self._torch, self.device = init_torch(spec, threads)
        self.name = spec.name
        # Few distinct widths keep accelerator kernels warm; CPU pays per token.
        self._width_multiple = 1 if self.device.type == "cpu" else 8
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
        dtype = torch_dtype(self._torch, spec.dtype)
        self.model = getattr(transformers, auto).from_pretrained(folder, dtype=dtype).to(self.device).eval()
        #: The folder's sentence-transformers Transformer config ({} for a plain folder).
        self.st_config = read_json_optional(Path(folder) / "sentence_bert_config.json") if Path(folder).is_dir() else {}
        positions = int(getattr(self.model.config, "max_position_embeddings", 0) or 0) or 10**9
        limit = self.st_config.get("max_seq_length") or min(self.tokenizer.model_max_length, positions)
        self.max_input_tokens = int(spec.max_input_tokens or limit)
        self.lower = bool(self.st_config.get("do_lower_case", False))
        self._backend = cut_tokenizer(self.tokenizer, self.max_input_tokens)
        self._pad_id = int(self.tokenizer.pad_token_id or 0)
        self._type_ids = "token_type_ids" in self.tokenizer.model_input_names

    def tokenize(self, sources: list[Source]) -> list[Tokens]:
        """Fast-tokenizer ids (pairs for rerankers), cut at max_input_tokens; ``overflowing`` marks a cut."""
        out: list[Tokens | None] = [None] * len(sources)
        texts: list[Any] = []
        where: list[int] = []
        for i, source in enumerate(sources):
            if isinstance(source, bytes):
                out[i] = not_text(self.name)
                continue
            if self.lower:
                source = source.lower() if isinstance(source, str) else (source[0].lower(), source[1].lower())
            texts.append(source)
            where.append(i)
        for i, text, enc in zip(where, texts, self._backend.encode_batch(texts) if texts else []):
            pair = isinstance(text, tuple)
            out[i] = Tokens(
                enc.ids,
                len(enc.ids),
                bool(enc.overflowing),
                text if not pair else text[1],
                type_ids=enc.type_ids if pair else None,
            )
        return [t for t in out if t is not None]

    def encode(self, batch: list[Tokens], task: str = "last_hidden_state") -> tuple[Any, Any]:
        """Run the model on the padded batch: (its ``task`` output, the attention mask)."""
        torch = self._torch
        width = -(-max(t.length for t in batch) // self._width_multiple) * self._width_multiple
        ids = np.full((len(batch), width), self._pad_id, dtype=np.int64)
        mask = np.zeros((len(batch), width), dtype=np.int64)
        types = np.zeros((len(batch), width), dtype=np.int64)
        for row, tok in enumerate(batch):
            ids[row, : tok.length] = tok.ids or []
            mask[row, : tok.length] = 1
            if tok.type_ids is not None:
                types[row, : tok.length] = tok.type_ids
        inputs: dict[str, Any] = {
            "input_ids": torch.from_numpy(ids).to(self.device),
            "attention_mask": torch.from_numpy(mask).to(self.device),
        }
        if self._type_ids:
            inputs["token_type_ids"] = torch.from_numpy(types).to(self.device)
        return getattr(self.model(**inputs), task), inputs["attention_mask"]

    def load_dense(self, folder: Path) -> tuple[Any, Any]:
        """A sentence-transformers Dense module (linear + activation) on the model's device."""
        torch = self._torch
        cfg = read_json(folder / "config.json", self.name)
        act_name = str(cfg.get("activation_function", "Identity")).rsplit(".", 1)[-1]
        if act_name not in _ACTIVATIONS:
            raise ConfigError(f"model {self.name}: Dense activation {act_name!r} is not supported")
        linear = torch.nn.Linear(cfg["in_features"], cfg["out_features"], bias=cfg.get("bias", True))
        if (folder / "model.safetensors").exists():
            from safetensors.torch import load_file

            state = load_file(str(folder / "model.safetensors"))
        else:
            state = torch.load(str(folder / "pytorch_model.bin"), map_location="cpu", weights_only=True)
        linear.load_state_dict({k.removeprefix("linear."): v for k, v in state.items()})
        linear = linear.to(self.device, dtype=next(self.model.parameters()).dtype).eval()
        return linear, getattr(torch.nn, act_name)()


def modules_of(root: Path, name: str, allowed: set[str]) -> list[tuple[str, Path]]:
    """The (kind, folder) of each module in a sentence-transformers ``modules.json``; [] without one."""
    if not (root / "modules.json").exists():
        return []
    modules = read_json(root / "modules.json", name)
    found = [(str(m["type"]).rsplit(".", 1)[-1], root / m["path"]) for m in modules]
    kinds = [k for k, _ in found]
    if not kinds or kinds[0] not in ("Transformer", "MLMTransformer"):
        raise ConfigError(f"model {name}: modules.json must start with a Transformer, got {kinds}")
    if set(kinds) - allowed:
        raise ConfigError(f"model {name}: unsupported module(s) {sorted(set(kinds) - allowed)}")
    return found


class SentenceTransformerModel(Encoder):
    """A sentence-transformers (or plain transformers) folder giving one vector per text."""

    family = "text-dense"

    def __init__(self, spec: ModelSpec, threads: int) -> None:
        root = Path(weights(spec))
        modules = modules_of(root, spec.name, {"Transformer", "Pooling", "Dense", "Normalize"})
        kinds = [k for k, _ in modules]
        if modules and "Pooling" not in kinds:
            raise ConfigError(f"model {spec.name}: modules.json has no Pooling module")
        super().__init__(spec, threads, str(modules[0][1]) if modules else weights(spec))
        if modules:
            self.pooling = _pooling_mode(read_json(modules[kinds.index("Pooling")][1] / "config.json", spec.name))
            self.dense = [self.load_dense(folder) for kind, folder in modules if kind == "Dense"]
            self.normalizes = "Normalize" in kinds
        else:  # a plain transformers folder: the registry says how to pool
            self.pooling = spec.pooling or "mean"
            self.dense = []
            self.normalizes = spec.normalize
        self.dimensions = self._probe_dimensions()

    def forward(self, batch: list[Tokens], normalize: list[bool]) -> np.ndarray:
        """Pad to the longest in the batch, run the encoder, pool, dense, normalize."""
        torch = self._torch
        with torch.inference_mode():
            hidden, mask = self.encode(batch)
            vecs = self._pool(hidden, mask)
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
