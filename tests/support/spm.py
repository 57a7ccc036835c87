"""SentencePiece tokenizers trained offline on a fixed corpus, for tiny models of SentencePiece families.

Real checkpoints of XLM-R (BGE-M3, Jina v3) and SigLIP ship a SentencePiece
Unigram model; these builders train a small one (a few hundred pieces) from the
docstrings of standard-library modules, so the service tokenizes with the same
kind of tokenizer, normalizer and special tokens as the real models.
"""

from __future__ import annotations

import argparse
import collections
import io
import json
import textwrap
from pathlib import Path
from typing import Any

EXTRA = ["a photo of a cat", "Redis streams hold the queue.", "embedding models turn text into vectors, fast!"]


def corpus() -> list[str]:
    """Non-empty lines of a fixed corpus (stdlib docstrings plus the tests' texts)."""
    text = "\n".join(m.__doc__ or "" for m in (json, argparse, collections, textwrap, io))
    return [line for line in text.splitlines() if line.strip()] + EXTRA


def train(path: Path, vocab_size: int = 400, **special: int) -> Path:
    """Train a Unigram SentencePiece model into ``path`` (``pad``/``eos``/``unk``/``bos`` ids as given; -1 = none)."""
    import sentencepiece as spm

    ids = {"pad_id": 0, "eos_id": 1, "unk_id": 2, "bos_id": -1}
    ids.update({f"{k}_id": v for k, v in special.items()})
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus()),
        model_writer=buf,
        vocab_size=vocab_size,
        model_type="unigram",
        character_coverage=1.0,
        num_threads=1,
        minloglevel=2,
        **ids,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    return path


def pieces(model: Path) -> tuple[list[tuple[str, float]], bytes]:
    """The (piece, score) list and the normalizer's precompiled charsmap of a SentencePiece model."""
    from sentencepiece import sentencepiece_model_pb2 as spb

    proto = spb.ModelProto()
    proto.ParseFromString(model.read_bytes())
    return [(p.piece, p.score) for p in proto.pieces], proto.normalizer_spec.precompiled_charsmap


def xlm_roberta_tokenizer(folder: Path, max_length: int = 8192) -> Any:
    """An XLM-R tokenizer (fairseq ids: <s> 0, <pad> 1, </s> 2, <unk> 3, ..., <mask> last), saved to ``folder``."""
    from transformers import XLMRobertaTokenizer

    spiece = train(folder / "sentencepiece.bpe.model")
    vocab, charsmap = pieces(spiece)
    # SentencePiece ids 0-2 are <pad>, </s>, <unk>; XLM-R puts <s> <pad> </s> <unk> first and <mask> last.
    full = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), *vocab[3:], ("<mask>", 0.0)]
    tok = XLMRobertaTokenizer(vocab=full, _spm_precompiled_charsmap=charsmap, model_max_length=max_length)
    tok.save_pretrained(folder)
    return tok


def write_json(path: Path, data: Any) -> None:
    """``data`` as JSON at ``path``."""
    path.write_text(json.dumps(data, indent=2))


def qwen2_tokenizer(folder: Path, specials: list[str]) -> Any:
    """A Qwen2 byte-level BPE tokenizer trained on the corpus (plus ``yes``/``no``), with ``specials``, saved."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=600, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=["<|endoftext|>"]
    )
    bpe.train_from_iterator([*corpus(), *["yes no"] * 50], trainer=trainer)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    vocab = dict(model["vocab"])
    for word in ("yes", "no"):  # the reranker reads these two tokens' logits; real Qwen vocabularies have both
        vocab.setdefault(word, len(vocab))
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, model_max_length=8192)
    tok.add_special_tokens({"additional_special_tokens": specials})
    tok.save_pretrained(folder)
    return tok
