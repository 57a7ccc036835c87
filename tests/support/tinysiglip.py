"""A tiny SigLIP2 (NaFlex) folder laid out as google/siglip2-*-naflex ships it: Siglip2Model weights,
the Gemma BPE tokenizer transformers reads as ``Siglip2Tokenizer`` (lowercasing, byte fallback),
and the processor's settings (patch 16, at most 256 patches, text padded to 64).

(SigLIP's own builder, with its SentencePiece ``spiece.model``, is :func:`tests.support.tinyheads.siglip`.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from tests.support import spm
from tests.support.tinyheads import TINY

#: Gemma's special tokens, in its id order, then its 256 byte-fallback tokens.
GEMMA_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"] + [f"<0x{i:02X}>" for i in range(256)]


def siglip2_tokenizer() -> Any:
    """A Gemma-style BPE (spaces as ``▁``, byte fallback) trained on the corpus, as ``Siglip2Tokenizer``."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import Siglip2Tokenizer

    bpe = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    bpe.normalizer = normalizers.Replace(" ", "▁")
    bpe.pre_tokenizer = pre_tokenizers.Split(pattern="▁", behavior="merged_with_next")
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=GEMMA_SPECIALS)
    bpe.train_from_iterator([line.lower() for line in spm.corpus()], trainer=trainer)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    return Siglip2Tokenizer(vocab=dict(model["vocab"]), merges=merges, model_max_length=64)


def siglip2(folder: Path) -> Path:
    """The Siglip2Model folder with its Siglip2Processor (Siglip2ImageProcessor + Siglip2Tokenizer)."""
    from transformers import Siglip2Config, Siglip2ImageProcessor, Siglip2Model, Siglip2Processor

    tok = siglip2_tokenizer()
    cfg = Siglip2Config(
        text_config={
            "vocab_size": len(tok),
            "max_position_embeddings": 64,
            "pad_token_id": tok.pad_token_id,
            "eos_token_id": tok.eos_token_id,
            "bos_token_id": tok.bos_token_id,
            **TINY,
        },
        vision_config={"num_patches": 256, "patch_size": 16, **TINY},
    )
    torch.manual_seed(0)
    Siglip2Model(cfg).save_pretrained(folder)
    image_processor = Siglip2ImageProcessor(patch_size=16, max_num_patches=256)
    Siglip2Processor(image_processor=image_processor, tokenizer=tok).save_pretrained(folder)
    return folder
