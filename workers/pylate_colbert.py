"""ColBERT folders saved by PyLate (ColBERTv2 as lightonai/colbertv2.0 ships it, answerai-colbert, GTE-ModernColBERT).

What PyLate's ``ColBERT.encode(..., is_query=...)`` computes:

* the marker token (``[Q] `` for queries, ``[D] `` for documents, from
  ``config_sentence_transformers.json``) is inserted right after CLS, inside the
  query or document length (the text is cut one token shorter);
* queries are expanded with the mask token up to ``query_length`` (those
  positions are not attended to unless ``attend_to_expansion_tokens``) and
  every position is kept, expansions included;
* documents drop padding and the tokens of the skiplist (punctuation);
* a token-level Linear (``1_Dense``, no activation), then L2 normalisation.

Queries and documents differ only after tokenization, so the marker, the cut
and the expansion are applied here, on the ids the prep thread produced.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from embedstream.errors import ConfigError
from embedstream.registry import ModelSpec
from embedstream.workers.encoding import Encoder, modules_of, read_json, weights
from embedstream.workers.model import Source, Tokens
from embedstream.workers.vocabulary import Vocabulary, size_of

SETTINGS = "config_sentence_transformers.json"


def is_pylate(folder: str) -> bool:
    """A folder whose sentence-transformers settings carry PyLate's query prefix."""
    path = Path(folder) / SETTINGS
    return path.exists() and "query_prefix" in read_json(path, folder)


class PylateColbertModel(Encoder):
    """A (kept tokens x dimensions) matrix per text, queries expanded to ``query_length``."""

    family = "multi-vector"
    output = "multi"

    def __init__(self, spec: ModelSpec, threads: int) -> None:
        root = Path(weights(spec))
        modules = modules_of(root, spec.name, {"Transformer", "Dense"})
        cfg = read_json(root / SETTINGS, spec.name)
        super().__init__(spec, threads, str(root))
        for kind, folder in modules:
            if kind == "Dense" and read_json(folder / "config.json", spec.name).get("use_residual"):
                raise ConfigError(f"model {spec.name}: residual Dense layers are not supported")
        self.dense = [self.load_dense(folder) for kind, folder in modules if kind == "Dense"]
        self.query_length = int(cfg.get("query_length") or 32)
        self.document_length = int(cfg.get("document_length") or 180)
        self.expand = bool(cfg.get("do_query_expansion", True))
        self.attend_expansion = bool(cfg.get("attend_to_expansion_tokens", False))
        tok = self.tokenizer
        self.prefix = {
            "query": self._marker(str(cfg.get("query_prefix") or "")),
            "document": self._marker(str(cfg.get("document_prefix") or "")),
        }
        # PyLate pads (and expands queries) with the mask token, else the end token.
        self._fill = int(tok.mask_token_id if tok.mask_token_id is not None else tok.eos_token_id)
        words = list(cfg.get("skiplist_words") or [])
        self.skip_ids = np.array([tok.convert_tokens_to_ids(w) for w in words], dtype=np.int64)
        self.normalizes = True
        self.max_input_tokens = self.document_length
        # Tokenize reports the cut a document gets: one token short of document_length for the marker.
        room = self.document_length - (self.prefix["document"] is not None)
        self.vocabulary = Vocabulary(tok, room, size_of(self.model, tok), self.lower)
        self.dimensions = int(self.forward([Tokens([self._pad_id], 1, False, "")], [False])[0].shape[1])

    def _marker(self, prefix: str) -> int | None:
        if not prefix:
            return None
        found: Any = self.tokenizer.convert_tokens_to_ids(prefix)
        if not isinstance(found, int) or found == self.tokenizer.unk_token_id:
            raise ConfigError(f"model {self.name}: the marker {prefix!r} is not in the tokenizer's vocabulary")
        return int(found)

    def tokenize(self, sources: list[Source], side: str = "right") -> list[Tokens]:
        """Fast-tokenizer ids, cut on the right (as PyLate cuts); token ids and left cuts are refused:
        the marker, the query expansion and the query's own length apply to ids PyLate's tokenizer made."""
        if side != "right":
            return [self._refused("cuts texts on the right only") for _ in sources]
        out = super().tokenize(sources, side)
        return [self._refused("takes texts, not token ids") if isinstance(s, list) else t for s, t in zip(sources, out)]

    def _refused(self, why: str) -> Tokens:
        return Tokens(None, 1, False, "", error=f"model {self.name} (PyLate ColBERT) {why}")

    def _row(self, tok: Tokens) -> tuple[list[int], list[int], bool]:
        """The ids and attention mask PyLate feeds the model for one input, and whether it is a query."""
        query = tok.task == "query"
        marker = self.prefix["query" if query else "document"]
        limit = (self.query_length if query else self.document_length) - (marker is not None)
        ids = list(tok.ids or [])
        if len(ids) > limit:  # cut as the tokenizer does: the end token stays
            ids = [*ids[: limit - 1], ids[-1]]
        mask = [1] * len(ids)
        if query and self.expand:
            mask += [1 if self.attend_expansion else 0] * (limit - len(ids))
            ids += [self._fill] * (limit - len(ids))
        if marker is not None:
            ids.insert(1, marker)
            mask.insert(1, 1)
        return ids, mask, query

    def forward(self, batch: list[Tokens], normalize: list[bool]) -> list[np.ndarray]:
        """Each text's kept token vectors, in token order."""
        torch = self._torch
        rows = [self._row(tok) for tok in batch]
        width = max(len(ids) for ids, _, _ in rows)
        ids = np.full((len(batch), width), self._fill, dtype=np.int64)
        mask = np.zeros((len(batch), width), dtype=np.int64)
        for i, (row_ids, row_mask, _) in enumerate(rows):
            ids[i, : len(row_ids)] = row_ids
            mask[i, : len(row_mask)] = row_mask
        inputs: dict[str, Any] = {
            "input_ids": torch.from_numpy(ids).to(self.device),
            "attention_mask": torch.from_numpy(mask).to(self.device),
        }
        if self._type_ids:
            inputs["token_type_ids"] = torch.zeros_like(inputs["input_ids"])
        with torch.inference_mode():
            hidden = self.model(**inputs).last_hidden_state
            for linear, act in self.dense:
                hidden = act(linear(hidden))
            vecs = hidden.float().cpu().numpy()
        out = []
        for i, (row_ids, row_mask, query) in enumerate(rows):
            if query and self.expand:
                keep = np.ones(len(row_ids), dtype=bool)
            else:
                keep = np.asarray(row_mask, dtype=bool)
                if not query and self.skip_ids.size:
                    keep &= ~np.isin(np.asarray(row_ids), self.skip_ids)
            kept = vecs[i, : len(row_ids)][keep]
            if normalize[i]:
                kept = kept / np.maximum(np.linalg.norm(kept, axis=1, keepdims=True), 1e-12)
            out.append(np.ascontiguousarray(kept, dtype=np.float32))
        return out
