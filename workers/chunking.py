"""Long inputs: tokenizing only a bounded prefix when cutting, and splitting into chunks of tokens.

Cutting: a text is tokenized from a prefix of a few characters per token the
model keeps, ending before whitespace, so every word in it is whole and its
tokens are the full text's first tokens; only when the prefix does not fill the
model is it doubled. A 64 KiB text cut at 256 tokens costs the tokenization of
~2 KiB.

Chunking: a text is tokenized whole (without special tokens) for its token
offsets, split into windows of ``size - specials - prompt`` tokens that repeat
``overlap`` tokens of the window before and end between words, and each window's
characters are prepared like any input (prompt, special tokens). So a chunk's
vector is exactly the vector of its text embedded on its own, and the chunks of
every entry share the batcher with ordinary inputs. :func:`pool` turns a
finished entry's chunk outputs into one output per input.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from embedstream import vectors, wire
from embedstream.errors import Code
from embedstream.workers.model import Source, Tokens

#: Characters per kept token in the first prefix tried; English averages ~4.5.
PREFIX_CHARS_PER_TOKEN = 8
#: Tokens of the model's special tokens where the model does not say (the debug model).
DEFAULT_SPECIALS = 2
_WORD = re.compile(r"\S+")


def prefix(text: str, chars: int) -> str:
    """The longest start of ``text`` within ``chars`` characters that ends before whitespace."""
    if len(text) <= chars:
        return text
    cut = chars
    while cut > chars // 2 and not text[cut].isspace():
        cut -= 1
    return text[: cut if cut > chars // 2 else chars]


def encode_prefixes(encode: Callable[[list[Any]], list[Any]], texts: list[Any], max_tokens: int) -> list[Any]:
    """``encode(texts)`` of a cutting tokenizer, tokenizing only bounded prefixes of long texts.

    A prefix that overflows ``max_tokens`` gives the same kept tokens as the
    whole text; one that does not is doubled until it does or is the whole text.
    Pairs (rerank) are encoded whole."""
    chars = max(64, max_tokens * PREFIX_CHARS_PER_TOKEN)
    pending = list(range(len(texts)))
    out: list[Any] = [None] * len(texts)
    while pending:
        cuts = [texts[i] if isinstance(texts[i], tuple) else prefix(texts[i], chars) for i in pending]
        again = []
        for i, cut, enc in zip(pending, cuts, encode(cuts)):
            if cut is texts[i] or len(cut) == len(texts[i]) or enc.overflowing:
                out[i] = enc
            else:
                again.append(i)
        pending = again
        chars *= 4
    return out


@dataclass(frozen=True, slots=True)
class Span:
    """Where one chunk lies in its input: half-open token and character ranges."""

    input: int
    token_start: int
    token_end: int
    char_start: int
    char_end: int


@dataclass(slots=True)
class Layout:
    """The chunks of one entry, in order: the entry's tokens are these chunks'."""

    spans: list[Span]
    inputs: int

    def flat(self) -> list[int]:
        """Five integers per chunk, as the reply carries them."""
        return [v for s in self.spans for v in (s.input, s.token_start, s.token_end, s.char_start, s.char_end)]


class Splitter:
    """A model's token offsets: its fast tokenizer without cutting, or whitespace words (debug)."""

    def __init__(self, model: Any) -> None:
        tokenizer = getattr(model, "tokenizer", None)
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self.max_tokens = int(model.max_input_tokens)
        self.backend = None
        self.specials = DEFAULT_SPECIALS
        if backend is not None:
            self.backend = backend.__class__.from_str(backend.to_str())
            self.backend.no_truncation()
            self.backend.no_padding()
            self.specials = int(self.backend.num_special_tokens_to_add(False))

    def offsets(self, text: str) -> tuple[list[tuple[int, int]], list[int]]:
        """(char start, char end) and word number of each token of ``text``, special tokens left out."""
        if self.backend is None:
            words = [m.span() for m in _WORD.finditer(text)]
            return words, list(range(len(words)))
        enc = self.backend.encode(text, add_special_tokens=False)
        return list(enc.offsets), [-1 if w is None else w for w in enc.word_ids]

    def count(self, text: str) -> int:
        """Tokens of ``text`` without special tokens."""
        return len(self.offsets(text)[0]) if text else 0

    def windows(self, text: str, size: int, overlap: int, prompt: int) -> list[tuple[int, int, int, int]]:
        """(token start, token end, char start, char end) of each chunk of ``text``."""
        offsets, words = self.offsets(text)
        n = len(offsets)
        width = max(1, min(size, self.max_tokens) - self.specials - prompt)
        if n <= width:
            return [(0, n, 0, len(text))]
        out = []
        start = 0
        while True:
            end = min(start + width, n)
            cut = end
            while start < cut < n and words[cut] == words[cut - 1] >= 0:
                cut -= 1  # end between words, so the chunk's text tokenizes to the same tokens
            end = cut if cut > start else end  # a word longer than a chunk is split
            out.append((start, end, offsets[start][0], offsets[end - 1][1]))
            if end >= n:
                return out
            nxt = end - overlap
            while nxt > start + 1 and words[nxt] == words[nxt - 1] >= 0:
                nxt -= 1
            start = nxt if nxt > start else end


def splitter(model: Any) -> Splitter:
    """The model's :class:`Splitter`, made once."""
    found: Splitter | None = getattr(model, "_embedstream_splitter", None)
    if found is None:
        found = Splitter(model)
        model._embedstream_splitter = found
    return found


Prepared = tuple[list[Tokens], Layout | None, tuple[str, str] | None]


def prepare(
    model: Any, work: Sequence[tuple[wire.Job, list[Source], str]], max_per_input: int, max_per_request: int
) -> list[Prepared]:
    """Tokens for each (job, sources, prompt): one per input, or one per chunk for chunking jobs
    (with their layout, or the error that refuses the entry). One tokenize call for all."""
    plans: list[tuple[list[Source], Layout | None, tuple[str, str] | None]] = []
    for job, sources, prompt in work:
        if not job.chunking:
            plans.append((sources, None, None))
            continue
        plans.append(_plan(model, job, prompt, max_per_input, max_per_request))
    tokens = _tokenize(model, [(sources, job.truncation_side) for (sources, _, _), (job, _, _) in zip(plans, work)])
    out: list[Prepared] = []
    at = 0
    for sources, layout, error in plans:
        toks = tokens[at : at + len(sources)]
        at += len(sources)
        if layout is not None and error is None:
            bad = next((i for i, t in enumerate(toks) if t.error), None)
            if bad is not None:
                error = (Code.INVALID_ARGUMENT.value, f"inputs[{layout.spans[bad].input}]: {toks[bad].error}")
        out.append((toks, layout, error))
    return out


def _tokenize(model: Any, groups: list[tuple[list[Source], str]]) -> list[Tokens]:
    """The tokens of every group's sources, in order: one tokenize call per truncation side."""
    owner = [side for sources, side in groups for _ in sources]
    out: list[Any] = [None] * len(owner)
    for side in sorted(set(owner)):
        at = [i for i, s in enumerate(owner) if s == side]
        flat = [source for sources, s in groups if s == side for source in sources]
        for i, tok in zip(at, model.tokenize(flat, side)):
            out[i] = tok
    return out


def _plan(
    model: Any, job: wire.Job, prompt: str, max_per_input: int, max_per_request: int
) -> tuple[list[Source], Layout | None, tuple[str, str] | None]:
    split = splitter(model)
    size = job.chunk_tokens or split.max_tokens
    overlap = job.chunk_overlap if job.chunk_overlap >= 0 else size // 8
    prompt_tokens = split.count(prompt)
    sources: list[Source] = []
    spans: list[Span] = []
    for i, item in enumerate(job.inputs):
        if not isinstance(item, str):
            sources.append(item)
            spans.append(Span(i, 0, 0, 0, 0))
            continue
        windows = split.windows(item, size, overlap, prompt_tokens)
        if len(windows) > max_per_input:
            return [], None, _too_many(f"inputs[{i}].text", len(windows), max_per_input, "per input", size)
        for ts, te, cs, ce in windows:
            sources.append(prompt + item[cs:ce])
            spans.append(Span(i, ts, te, cs, ce))
        if len(spans) > max_per_request:
            return [], None, _too_many("chunking", len(spans), max_per_request, "per request", size)
    return sources, Layout(spans, len(job.inputs)), None


def _too_many(field: str, n: int, limit: int, per: str, size: int) -> tuple[str, str]:
    return (
        Code.INVALID_ARGUMENT.value,
        f"{field}: splits into {n}+ chunks of {size} tokens, over the limit of {limit} {per}; "
        "use larger chunks, less overlap or shorter texts",
    )


def pool(kind: str, results: list[Any], layout: Layout, dimensions: int, normalize: bool) -> list[Any]:
    """One output per input from the chunk outputs: dense rows cut (Matryoshka) and averaged
    (re-normalized when normalizing), sparse weights max-pooled, token matrices concatenated."""
    groups: list[list[Any]] = [[] for _ in range(layout.inputs)]
    for span, result in zip(layout.spans, results):
        groups[span.input].append(result)
    if kind == "multi":
        return [np.concatenate(g) for g in groups]
    if kind == "sparse":
        return [_max_sparse(g, normalize) for g in groups]
    out = []
    for g in groups:
        mean = vectors.truncate(np.stack(g), dimensions, normalize).astype(np.float32).mean(axis=0)
        if normalize:
            mean = mean / max(float(np.linalg.norm(mean)), 1e-12)
        out.append(mean.astype(np.float32))
    return out


def _max_sparse(pairs: list[tuple[np.ndarray, np.ndarray]], normalize: bool) -> tuple[np.ndarray, np.ndarray]:
    indices = np.concatenate([idx for idx, _ in pairs]).astype(np.uint32)
    weights = np.concatenate([w for _, w in pairs]).astype(np.float32)
    keep, where = np.unique(indices, return_inverse=True)
    pooled = np.zeros(len(keep), dtype=np.float32)
    np.maximum.at(pooled, where, weights)
    if normalize:
        pooled /= max(float(np.linalg.norm(pooled)), 1e-12)
    return keep, pooled
