"""A model's tokenizer as the service exposes it: cutting on either side, Tokenize, Decode, id checks.

Every family with a Hugging Face fast tokenizer holds one :class:`Vocabulary`.
It keeps copies of the tokenizer's backend that cut at the model's max input
tokens on the right or on the left (special tokens kept, as transformers'
``truncation_side`` does) and never pad, one that never cuts, and the number of
ids the model takes. Tokenize and Decode entries are answered from it without
a forward pass; token-id inputs are checked against it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from embedstream.textwire import TokenList
from embedstream.workers.chunking import encode_prefixes


def cut_tokenizer(tokenizer: Any, max_tokens: int, side: str = "right") -> Any:
    """A copy of a fast tokenizer's backend that truncates at ``max_tokens`` (keeping the start,
    or with ``side`` "left" the end) and never pads: the batcher pads each sorted batch itself."""
    backend = tokenizer.backend_tokenizer
    cut = backend.__class__.from_str(backend.to_str())
    cut.enable_truncation(max_tokens, direction=side)
    cut.no_padding()
    return cut


def size_of(model: Any, tokenizer: Any) -> int:
    """Ids a model takes: its input embedding's rows, and no more than its tokenizer knows."""
    try:
        rows = int(model.get_input_embeddings().num_embeddings)
    except (AttributeError, NotImplementedError):
        rows = len(tokenizer)
    return min(rows, len(tokenizer))


class Vocabulary:
    """The tokenizer of one model, cut at its max input tokens."""

    def __init__(self, tokenizer: Any, max_tokens: int, size: int, lower: bool = False) -> None:
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        #: Token ids below this are the model's.
        self.size = size
        #: The model lowercases texts first (sentence-transformers ``do_lower_case``).
        self.lower = lower
        self._cut = {"right": cut_tokenizer(tokenizer, max_tokens)}
        backend = tokenizer.backend_tokenizer
        self._whole = backend.__class__.from_str(backend.to_str())
        self._whole.no_truncation()
        self._whole.no_padding()
        self.specials = int(self._whole.num_special_tokens_to_add(False))

    def cutter(self, side: str) -> Any:
        """The backend that cuts on ``side`` ("right" or "left")."""
        if side not in self._cut:
            self._cut[side] = cut_tokenizer(self.tokenizer, self.max_tokens, side)
        return self._cut[side]

    def encode(self, texts: list[Any], side: str = "right") -> list[Any]:
        """Encodings (specials added, cut on ``side``) of texts or (query, document) pairs.
        Cutting on the right tokenizes only a bounded prefix of a long text; on the left the
        whole text, since the kept end is known only once all of it is tokenized."""
        if side == "right":
            return encode_prefixes(self._cut["right"].encode_batch, texts, self.max_tokens)
        return list(self.cutter(side).encode_batch(texts))

    def check(self, ids: list[int]) -> str:
        """Why ``ids`` cannot be embedded as given ("" when they can)."""
        if not ids:
            return "at least one token id is required"
        if len(ids) > self.max_tokens:
            return f"{len(ids)} token ids exceed the {self.max_tokens} the model reads"
        bad = next((i for i in ids if i >= self.size), None)
        if bad is not None:
            return f"token id {bad} is outside the vocabulary (ids 0 to {self.size - 1})"
        return ""

    def tokenize(self, text: str, add_special: bool, truncate: bool, side: str) -> TokenList:
        """The tokens the model reads for ``text`` (all of them without ``truncate``), the
        count of the whole text's, and whether the model cuts it."""
        text = text.lower() if self.lower else text
        whole = self._whole.encode(text, add_special_tokens=add_special)
        total = len(whole.ids)
        over = total + (0 if add_special else self.specials) > self.max_tokens
        enc = whole
        keep: Sequence[int] = range(len(whole.ids))
        if truncate and over:
            enc = self.cutter(side).encode(text)  # cut as Embed cuts, then drop the specials if not asked
            keep = range(len(enc.ids)) if add_special else [k for k, s in enumerate(enc.special_tokens_mask) if not s]
        special = [int(enc.special_tokens_mask[k]) for k in keep]
        offsets = [v for k, s in zip(keep, special) for v in ((0, 0) if s else enc.offsets[k])]
        return TokenList([enc.ids[k] for k in keep], [enc.tokens[k] for k in keep], offsets, special, total, over)

    def decode(self, ids: list[int], skip_special: bool) -> str:
        """The text of ``ids``, as the model's tokenizer decodes it."""
        return str(self.tokenizer.decode(ids, skip_special_tokens=skip_special))
