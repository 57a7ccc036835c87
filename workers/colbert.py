"""Multi-vector (ColBERT-style) models: one normalized vector per kept token.

Takes a sentence-transformers MultiVectorEncoder folder: Transformer, Dense
(token-level projection), MultiVectorMask (which tokens count: for documents,
tokens of its skiplist are dropped) and Normalize, and reproduces
``MultiVectorEncoder.encode`` / ``encode_query``. A plain transformers folder
gives every real token's hidden state.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from embedstream.errors import ConfigError
from embedstream.registry import ModelSpec
from embedstream.workers.encoding import Encoder, modules_of, read_json, weights
from embedstream.workers.model import Tokens


class ColbertModel(Encoder):
    """A matrix (kept tokens x dimensions) per text."""

    family = "multi-vector"
    output = "multi"

    def __init__(self, spec: ModelSpec, threads: int) -> None:
        root = Path(weights(spec))
        if (root / "artifact.metadata").exists():
            # Stanford ColBERT's own layout (HF_ColBERT + artifact.metadata): its linear head and markers
            # are not read here; serve it as PyLate saves it (pylate.models.ColBERT(path).save(dir)).
            raise ConfigError(f"model {spec.name}: a Stanford ColBERT folder; save it with PyLate first")
        modules = modules_of(root, spec.name, {"Transformer", "Dense", "MultiVectorMask", "Normalize"})
        super().__init__(spec, threads, str(modules[0][1] if modules else root))
        if self.st_config.get("query_expansion"):
            raise ConfigError(f"model {spec.name}: query expansion is not supported yet")
        self.dense = [self.load_dense(f) for kind, f in modules if kind == "Dense"]
        self.normalizes = any(kind == "Normalize" for kind, _ in modules) if modules else spec.normalize
        skip_words: list[str] = []
        self.skip_tasks = ["document"]
        for kind, f in modules:
            if kind == "MultiVectorMask":
                cfg = read_json(f / "config.json", spec.name)
                skip_words = list(cfg.get("skiplist_words") or [])
                tasks = cfg.get("skiplist_tasks") or ["document"]
                self.skip_tasks = [tasks] if isinstance(tasks, str) else list(tasks)
                if cfg.get("keep_only_token_ids"):
                    raise ConfigError(f"model {spec.name}: keep_only_token_ids is not supported")
        unk = self.tokenizer.unk_token_id
        ids = [self.tokenizer.convert_tokens_to_ids(w) for w in skip_words]
        self.skip_ids = np.array(
            [i for i, w in zip(ids, skip_words) if i != unk or w == self.tokenizer.unk_token], dtype=np.int64
        )
        probe = self.forward([Tokens([self._pad_id], 1, False, "")], [False])
        self.dimensions = int(probe[0].shape[1])

    def forward(self, batch: list[Tokens], normalize: list[bool]) -> list[np.ndarray]:
        """Each text's kept token vectors, in token order."""
        torch = self._torch
        with torch.inference_mode():
            hidden, _ = self.encode(batch)
            for linear, act in self.dense:
                hidden = act(linear(hidden))
            want = torch.tensor(normalize, device=hidden.device)[:, None, None]
            hidden = torch.where(want, torch.nn.functional.normalize(hidden, p=2, dim=-1), hidden)
            vecs = hidden.float().cpu().numpy()
        out = []
        for row, tok in enumerate(batch):
            keep = np.ones(tok.length, dtype=bool)
            if (tok.task or "document") in self.skip_tasks and self.skip_ids.size:
                keep &= ~np.isin(np.asarray(tok.ids), self.skip_ids)
            out.append(np.ascontiguousarray(vecs[row, : tok.length][keep]))
        return out
