"""What the transformer-based families share: reading a model folder, torch, the tokenizer, the encoder.

:class:`Encoder` is a fast tokenizer cloned with truncation and no padding (so
tokenizing is a stage of its own; :mod:`embedstream.workers.vocabulary`), the
model on its device and dtype, and padding of a sorted batch to its longest
input. Token-id inputs are taken as given, checked against the vocabulary. The text-dense, sparse,
multi-vector and rerank families build on it; the image-text family and the
debug model take the smaller helpers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from embedstream.errors import ConfigError
from embedstream.registry import HUB_SCHEME, ModelSpec
from embedstream.workers import strict
from embedstream.workers.model import Source, Tokens
from embedstream.workers.vocabulary import Vocabulary, size_of

_ACTIVATIONS = ("Identity", "Tanh", "ReLU", "GELU", "Sigmoid")


def weights(spec: ModelSpec) -> str:
    """What ``from_pretrained`` takes for the spec's path: a folder (that must exist), or a hub id."""
    if spec.path.startswith(HUB_SCHEME):
        return spec.path[len(HUB_SCHEME) :]
    if not Path(spec.path).is_dir():
        raise ConfigError(f"model {spec.name}: {spec.path} is not a folder")
    return spec.path


def read_json(path: Path, name: str) -> Any:
    """A JSON file of a model folder; errors name the model."""
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"model {name}: cannot read {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"model {name}: {path} is not JSON: {exc}") from None


def read_json_optional(path: Path) -> dict[str, Any]:
    """A JSON file that may be missing ({} then)."""
    return json.loads(path.read_text()) if path.exists() else {}


def not_text(model: str) -> Tokens:
    """Tokens carrying the error for an input a text model cannot take."""
    return Tokens(None, 1, False, "", error=f"model {model} takes text only")


def torch_dtype(torch: Any, name: str) -> Any:
    """The torch dtype a registry dtype names."""
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def two_towers(
    torch: Any, batch: list[Tokens], normalize: list[bool], dimensions: int, texts: Any, others: Any
) -> np.ndarray:
    """The vectors of a batch mixing texts (no pixels: ``texts(batch)``) and images or audio windows
    (``others(batch)``): each kind through its own tower, normalized where asked, in input order."""
    text_rows = [i for i, t in enumerate(batch) if t.pixels is None]
    other_rows = [i for i, t in enumerate(batch) if t.pixels is not None]
    out = np.empty((len(batch), dimensions), dtype=np.float32)
    with torch.inference_mode():
        for rows, encode in ((text_rows, texts), (other_rows, others)):
            if not rows:
                continue
            vecs = encode([batch[i] for i in rows]).float()
            want = torch.tensor([normalize[i] for i in rows], device=vecs.device)[:, None]
            vecs = torch.where(want, torch.nn.functional.normalize(vecs, p=2, dim=-1), vecs)
            out[rows] = vecs.cpu().numpy()
    return out


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

        self.name = spec.name
        self._network(spec, threads, folder, auto)
        # Few distinct widths keep accelerator kernels warm; CPU pays per token.
        self._width_multiple = 1 if self.device.type == "cpu" else 8
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
        except ImportError as exc:
            raise strict.missing_package(spec.name, exc) from None
        #: Which side a batch is padded on: decoders pad left where their tokenizer says so.
        self.padding_side = "left" if getattr(self.tokenizer, "padding_side", "right") == "left" else "right"
        #: The folder's sentence-transformers Transformer config ({} for a plain folder).
        self.st_config = read_json_optional(Path(folder) / "sentence_bert_config.json") if Path(folder).is_dir() else {}
        positions = int(getattr(self.model.config, "max_position_embeddings", 0) or 0) or 10**9
        limit = self.st_config.get("max_seq_length") or min(self.tokenizer.model_max_length, positions)
        self.max_input_tokens = int(spec.max_input_tokens or limit)
        self.lower = bool(self.st_config.get("do_lower_case", False))
        self.vocabulary: Vocabulary | None = Vocabulary(
            self.tokenizer, self.max_input_tokens, size_of(self.model, self.tokenizer), self.lower
        )
        self._backend = self.vocabulary.cutter("right")
        self._pad_id = int(self.tokenizer.pad_token_id or 0)
        self._type_ids = "token_type_ids" in self.tokenizer.model_input_names

    def _network(self, spec: ModelSpec, threads: int, folder: str, auto: str) -> None:
        """The network itself (``model``, ``device``): torch's, strictly loaded, on the spec's device and dtype."""
        self._torch, self.device = init_torch(spec, threads)
        dtype = torch_dtype(self._torch, spec.dtype)
        self.model = strict.pretrained(auto, folder, spec.name, dtype=dtype).to(self.device).eval()

    def tokenize(self, sources: list[Source], side: str = "right") -> list[Tokens]:
        """Fast-tokenizer ids (pairs for rerankers), cut at max_input_tokens on ``side``; ``overflowing``
        marks a cut. Token ids are taken as given. Long texts cut on the right cost the tokenization
        of a bounded prefix only (:meth:`Vocabulary.encode`)."""
        assert self.vocabulary is not None
        out: list[Tokens | None] = [None] * len(sources)
        texts: list[Any] = []
        where: list[int] = []
        for i, source in enumerate(sources):
            if isinstance(source, bytes):
                out[i] = not_text(self.name)
                continue
            if isinstance(source, list):
                error = self.vocabulary.check(source)
                out[i] = Tokens(None, 1, False, "", error=error) if error else Tokens(source, len(source), False, "")
                continue
            if self.lower:
                source = source.lower() if isinstance(source, str) else (source[0].lower(), source[1].lower())
            texts.append(source)
            where.append(i)
        encoded = self.vocabulary.encode(texts, side) if texts else []
        for i, text, enc in zip(where, texts, encoded):
            pair = isinstance(text, tuple)
            out[i] = Tokens(
                enc.ids,
                len(enc.ids),
                bool(enc.overflowing),
                text if not pair else text[1],
                type_ids=enc.type_ids if pair else None,
            )
        return [t for t in out if t is not None]

    def encode(self, batch: list[Tokens], task: str = "last_hidden_state", **extra: Any) -> tuple[Any, Any]:
        """Run the model on the padded batch (``extra``: more model arguments): (its ``task`` output, the mask)."""
        torch = self._torch
        ids, mask, types = self.padded(batch)
        inputs: dict[str, Any] = {
            "input_ids": torch.from_numpy(ids).to(self.device),
            "attention_mask": torch.from_numpy(mask).to(self.device),
        }
        if self._type_ids:
            inputs["token_type_ids"] = torch.from_numpy(types).to(self.device)
        return getattr(self.model(**inputs, **extra), task), inputs["attention_mask"]

    def padded(self, batch: list[Tokens]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The batch's ids, attention mask and segment ids, padded on the tokenizer's side to its longest input."""
        width = -(-max(t.length for t in batch) // self._width_multiple) * self._width_multiple
        ids = np.full((len(batch), width), self._pad_id, dtype=np.int64)
        mask = np.zeros((len(batch), width), dtype=np.int64)
        types = np.zeros((len(batch), width), dtype=np.int64)
        for row, tok in enumerate(batch):
            span = slice(width - tok.length, width) if self.padding_side == "left" else slice(0, tok.length)
            ids[row, span] = tok.ids or []
            mask[row, span] = 1
            if tok.type_ids is not None:
                types[row, span] = tok.type_ids
        return ids, mask, types

    def token_strings(self, indices: np.ndarray) -> list[str]:
        """The vocabulary token of each index (sparse outputs' ``return_tokens``)."""
        tokens: Any = self.tokenizer.convert_ids_to_tokens(indices.tolist())
        return [str(t) for t in tokens]

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
        strict.state_dict(
            linear, {k.removeprefix("linear."): v for k, v in state.items()}, self.name, f"Dense {folder}"
        )
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
