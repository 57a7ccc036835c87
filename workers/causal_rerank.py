"""Causal-LM rerankers (Qwen3-Reranker): the score is P("yes") at the last position.

The Qwen3-Reranker model card's formula: each (query, document) pair becomes
``<Instruct>: {instruction}\\n<Query>: {query}\\n<Document>: {doc}`` between the
card's chat-template prefix (a system turn asking for "yes" or "no", then the
user turn) and suffix (the assistant turn with an empty think block); the pair
text is cut so the whole stays within the context. The score is
``softmax([logit("no"), logit("yes")])[1]`` of the last position.

Batches are right-padded and each row reads its own last real position, with
positions counted from 0 as for a single input: a score never depends on its
batch-mates (the card's left padding shifts positions of shorter rows).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from embedstream.errors import ConfigError
from embedstream.registry import ModelSpec
from embedstream.workers.encoding import Encoder, not_text, read_json_optional, weights
from embedstream.workers.model import Source, Tokens

PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct "
    'provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
)
SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"


def is_causal(folder: str) -> bool:
    """A folder whose model is a causal LM (``*ForCausalLM``)."""
    architectures = read_json_optional(Path(folder) / "config.json").get("architectures") or []
    return any(str(a).endswith("ForCausalLM") for a in architectures)


class CausalRerankModel(Encoder):
    """A relevance score per (query, document) pair from a causal LM's yes/no logits."""

    family = "rerank"
    output = "score"

    def __init__(self, spec: ModelSpec, threads: int) -> None:
        super().__init__(spec, threads, weights(spec), "AutoModelForCausalLM")
        tok = self.tokenizer
        self.prefix: list[int] = tok.encode(PREFIX, add_special_tokens=False)
        self.suffix: list[int] = tok.encode(SUFFIX, add_special_tokens=False)
        ids = [tok.convert_tokens_to_ids(w) for w in ("no", "yes")]
        if any(i is None or i == tok.unk_token_id for i in ids):
            raise ConfigError(f"model {spec.name}: the tokenizer has no single 'yes' and 'no' tokens")
        self.no_yes = ids
        self.room = self.max_input_tokens - len(self.prefix) - len(self.suffix)
        self.dimensions = 1
        self.normalizes = False
        #: The card's <Instruct>: the registry's ``instruction`` (the card advises one per task), else its default.
        self.instruction = spec.instruction or INSTRUCTION

    def tokenize(self, sources: list[Source], side: str = "right") -> list[Tokens]:
        """The card's prompt around each pair, the pair text cut to fit the context (on the right:
        a left cut would drop the card's instruction and the query)."""
        out = []
        for source in sources:
            if isinstance(source, bytes):
                out.append(not_text(self.name))
                continue
            if not isinstance(source, tuple) or side != "right":
                why = "scores (query, document) pairs" if side == "right" else "cuts pairs on the right only"
                out.append(Tokens(None, 1, False, "", error=f"model {self.name} {why}"))
                continue
            query, doc = source
            text = f"<Instruct>: {self.instruction}\n<Query>: {query}\n<Document>: {doc}"
            ids = self.tokenizer.encode(text, add_special_tokens=False)
            cut = len(ids) > self.room
            ids = self.prefix + ids[: self.room] + self.suffix
            out.append(Tokens(ids, len(ids), cut, doc))
        return out

    def forward(self, batch: list[Tokens], normalize: list[bool]) -> np.ndarray:
        """Scores (batch, 1): P("yes") against "no" at each row's last real position."""
        torch = self._torch
        width = max(t.length for t in batch)
        ids = np.full((len(batch), width), self._pad_id, dtype=np.int64)
        mask = np.zeros((len(batch), width), dtype=np.int64)
        for row, tok in enumerate(batch):
            ids[row, : tok.length] = tok.ids or []
            mask[row, : tok.length] = 1
        inputs: dict[str, Any] = {
            "input_ids": torch.from_numpy(ids).to(self.device),
            "attention_mask": torch.from_numpy(mask).to(self.device),
        }
        with torch.inference_mode():
            logits = self.model(**inputs).logits
            last = torch.tensor([t.length - 1 for t in batch], device=logits.device)
            pair = logits[torch.arange(len(batch), device=logits.device), last][:, self.no_yes].float()
            scores = torch.nn.functional.log_softmax(pair, dim=1)[:, 1].exp()
        out: np.ndarray = scores.cpu().numpy().reshape(len(batch), 1)
        return out
