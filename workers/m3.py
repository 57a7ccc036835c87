"""BGE-M3: dense, sparse and multi-vector outputs of one XLM-R forward pass.

A BGE-M3 folder is an XLM-R checkpoint with two extra heads beside it, as
FlagEmbedding's ``BGEM3FlagModel`` reads them:

* dense: the CLS hidden state, L2-normalised;
* sparse (``sparse_linear.pt``, Linear(hidden, 1)): ``relu`` of it per token,
  the largest weight per token id, special tokens (CLS, EOS, PAD, UNK) and
  zero weights dropped;
* multi-vector (``colbert_linear.pt``, Linear(hidden, d)): applied to every
  real token after CLS, each vector L2-normalised.

Every batch computes the heads the registry's ``outputs`` list; each entry
then takes the outputs it asked for (:mod:`embedstream.workers.finish`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from embedstream.errors import ConfigError
from embedstream.registry import ModelSpec
from embedstream.workers import profiles, strict
from embedstream.workers.encoding import Encoder, weights
from embedstream.workers.model import Tokens

#: The head file each non-dense output needs.
HEADS = {"sparse": "sparse_linear.pt", "multi-vector": "colbert_linear.pt"}


def is_m3(folder: str) -> bool:
    """A folder holding BGE-M3's sparse or ColBERT head."""
    return any((Path(folder) / name).exists() for name in HEADS.values())


class BgeM3Model(Encoder):
    """Several outputs per text; ``forward`` gives one {output: value} dict per input."""

    family = "text-dense"
    output = "outputs"

    def __init__(self, spec: ModelSpec, threads: int) -> None:
        root = Path(weights(spec))
        super().__init__(spec, threads, str(root))
        self.outputs = spec.offered_outputs
        dtype = next(self.model.parameters()).dtype
        self.heads: dict[str, Any] = {}
        for output in self.outputs:
            if output == "dense":
                continue
            file = root / HEADS[output]
            if not file.exists():
                raise ConfigError(f"model {spec.name}: outputs lists {output} but {file} is missing")
            state = self._torch.load(str(file), map_location="cpu", weights_only=True)
            out_features, in_features = state["weight"].shape
            linear = self._torch.nn.Linear(in_features, out_features)
            strict.state_dict(linear, state, spec.name, str(file))
            self.heads[output] = linear.to(self.device, dtype=dtype).eval()
        self.normalizes = spec.normalize
        tok = self.tokenizer
        unused = {tok.cls_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id}
        self._unused = np.array(sorted(i for i in unused if i is not None), dtype=np.int64)
        hidden = int(self.model.config.hidden_size)
        self.output_dimensions = {
            "dense": hidden,
            "sparse": int(self.model.config.vocab_size),
            "multi-vector": int(self.heads["multi-vector"].out_features) if "multi-vector" in self.heads else 0,
        }
        self.dimensions = self.output_dimensions[self.outputs[0]]
        self.profile = profiles.built(spec, self, pooling="cls", heads=tuple(HEADS[o] for o in self.heads))

    def forward(self, batch: list[Tokens], normalize: list[bool]) -> list[dict[str, Any]]:
        """One dict per input: ``dense`` (d,), ``sparse`` (indices, weights), ``multi-vector`` (tokens - 1, d)."""
        torch = self._torch
        out: list[dict[str, Any]] = [{} for _ in batch]
        with torch.inference_mode():
            hidden, mask = self.encode(batch)
            want = torch.tensor(normalize, device=hidden.device)
            if "dense" in self.outputs:
                dense = hidden[:, 0]
                dense = torch.where(want[:, None], torch.nn.functional.normalize(dense, dim=-1), dense)
                for row, vec in zip(out, dense.float().cpu().numpy()):
                    row["dense"] = vec
            if "sparse" in self.heads:
                token_weights = torch.relu(self.heads["sparse"](hidden)).squeeze(-1).float().cpu().numpy()
                for i, tok in enumerate(batch):
                    out[i]["sparse"] = self._lexical(np.asarray(tok.ids), token_weights[i, : tok.length])
            if "multi-vector" in self.heads:
                vecs = self.heads["multi-vector"](hidden[:, 1:]) * mask[:, 1:, None].to(hidden.dtype)
                vecs = torch.where(want[:, None, None], torch.nn.functional.normalize(vecs, dim=-1), vecs)
                matrices = vecs.float().cpu().numpy()
                for i, tok in enumerate(batch):
                    out[i]["multi-vector"] = np.ascontiguousarray(matrices[i, : tok.length - 1])
        return out

    def _lexical(self, ids: np.ndarray, token_weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The largest weight of each token id, ids ascending; special tokens and zeros dropped."""
        keep = (token_weights > 0) & ~np.isin(ids, self._unused)
        unique, where = np.unique(ids[keep], return_inverse=True)
        best = np.zeros(len(unique), dtype=np.float32)
        np.maximum.at(best, where, token_weights[keep])
        return unique.astype(np.uint32), best
