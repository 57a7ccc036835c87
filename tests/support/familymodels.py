"""Tiny random models of the real embedding families, laid out as their checkpoints are.

Each has the real checkpoint's architecture (transformers class), weight names
(transformers writes the original names back on save), folder layout
(sentence-transformers modules, ``config_sentence_transformers.json``) and
tokenizer type: BERT WordPiece from the MiniLM package for BERT/E5/BGE/Nomic,
and byte-level BPE tokenizers trained here on a small corpus for ModernBERT,
Mistral (Llama tokenizer) and Qwen3 (Qwen2 tokenizer).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from tests.support.corpora import texts
from tests.support.models import MINILM

SMALL = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
E5_PROMPTS = {"query": "query: ", "document": "passage: "}
BGE_PROMPTS = {"query": "Represent this sentence for searching relevant passages: "}
NOMIC_PROMPTS = {"query": "search_query: ", "document": "search_document: "}
QWEN3_QUERY = "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:"


def _bpe(specials: list[str], size: int = 600) -> Any:
    """A byte-level BPE ``tokenizers.Tokenizer`` trained on a deterministic corpus."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(_corpus(), trainer)
    return tok


def _corpus() -> list[str]:
    return [*texts(400), QWEN3_QUERY, "search_query: search_document: Instruct: Query: passage: query:"]


def _save_st(folder: Path, hf: Path, pooling: str, normalize: bool, prompts: dict[str, str], **kw: Any) -> Path:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling, Transformer

    transformer = Transformer(str(hf), max_seq_length=kw.pop("max_seq_length", 128))
    dim = transformer.get_embedding_dimension()
    modules: list[torch.nn.Module] = [
        transformer,
        Pooling(dim, pooling_mode=pooling, include_prompt=kw.pop("include_prompt", True)),
    ]
    if kw.pop("dense", False):
        torch.manual_seed(1)
        modules.append(Dense(dim, 16, activation_function=torch.nn.Tanh()))
    if normalize:
        modules.append(Normalize())
    SentenceTransformer(modules=modules, device="cpu", prompts=prompts, **kw).save(str(folder))
    return folder


def bert_st(folder: Path, pooling: str, prompts: dict[str, str] | None = None, **kw: Any) -> Path:
    """A BERT sentence-transformers folder (E5/BGE/all-MiniLM layout) with the given pooling."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    hf = folder.parent / f"{folder.name}-hf"
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=30522, max_position_embeddings=128, **SMALL)).save_pretrained(hf)
    AutoTokenizer.from_pretrained(MINILM).save_pretrained(hf)
    return _save_st(folder, hf, pooling, kw.pop("normalize", True), prompts or {}, **kw)


def nomic(folder: Path) -> Path:
    """nomic-embed-text-v1.5's layout: NomicBert (original weight names), BERT WordPiece, mean + Normalize.
    Its task prefixes are not in the folder: the model card has them, and so does the service."""
    from transformers import AutoTokenizer, NomicBertConfig, NomicBertModel

    hf = folder.parent / f"{folder.name}-hf"
    torch.manual_seed(0)
    model = NomicBertModel(NomicBertConfig(vocab_size=30528, max_position_embeddings=256, **SMALL))
    with torch.no_grad():  # trained layer-norm biases: pooled vectors off zero mean, as real ones are
        for name, param in model.named_parameters():
            if "norm" in name and name.endswith("bias"):
                param.normal_(0, 0.5)
    model.save_pretrained(hf)
    AutoTokenizer.from_pretrained(MINILM).save_pretrained(hf)
    return _save_st(folder, hf, "mean", True, {})


def modernbert(folder: Path, pooling: str, prompts: dict[str, str]) -> Path:
    """gte-modernbert (cls) / modernbert-embed (mean + Nomic prefixes) layout: ModernBERT, BPE with [CLS]/[SEP]."""
    from tokenizers import processors
    from transformers import ModernBertConfig, ModernBertModel, PreTrainedTokenizerFast

    specials = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
    tok = _bpe(specials)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    hf = folder.parent / f"{folder.name}-hf"
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        mask_token="[MASK]",
        model_max_length=256,
        model_input_names=["input_ids", "attention_mask"],
    )
    fast.save_pretrained(hf)
    cfg = ModernBertConfig(
        vocab_size=tok.get_vocab_size(),
        pad_token_id=tok.token_to_id("[PAD]"),
        cls_token_id=cls_id,
        sep_token_id=sep_id,
        bos_token_id=cls_id,
        eos_token_id=sep_id,
        max_position_embeddings=256,
        global_attn_every_n_layers=2,
        local_attention=16,
        **SMALL,
    )
    torch.manual_seed(0)
    ModernBertModel(cfg).save_pretrained(hf)
    return _save_st(folder, hf, pooling, True, prompts)


def decoder(folder: Path, kind: str) -> Path:
    """e5-mistral-7b-instruct ("mistral": Llama SentencePiece-style BPE with byte fallback, <s> ... </s>,
    right padding) or Qwen3-Embedding ("qwen3": Qwen2 byte-level BPE, <|endoftext|> appended, left
    padding) layout, with lasttoken pooling + Normalize, as their sentence-transformers folders are."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import LlamaTokenizer, MistralConfig, MistralModel, Qwen2Tokenizer, Qwen3Config, Qwen3Model

    if kind == "mistral":
        eos, specials = "</s>", ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
        tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
        tok.train_from_iterator(_corpus(), trainers.BpeTrainer(vocab_size=700, special_tokens=specials))
    else:
        eos, tok = "<|endoftext|>", _bpe(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    merges = [
        tuple(m) if isinstance(m, list) else tuple(m.split()) for m in json.loads(tok.to_str())["model"]["merges"]
    ]
    hf = folder.parent / f"{folder.name}-hf"
    if kind == "mistral":
        fast: Any = LlamaTokenizer(
            vocab=tok.get_vocab(), merges=merges, add_bos_token=True, add_eos_token=True, pad_token=eos
        )
    else:
        fast = Qwen2Tokenizer(vocab=tok.get_vocab(), merges=merges, pad_token=eos, padding_side="left")
        eos_id = tok.token_to_id(eos)
        fast.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single=f"$A {eos}", pair=f"$A {eos} $B {eos}", special_tokens=[(eos, eos_id)]
        )
    fast.save_pretrained(hf)
    common = dict(vocab_size=tok.get_vocab_size(), max_position_embeddings=256, num_key_value_heads=1, **SMALL)
    pad = tok.token_to_id(eos)
    torch.manual_seed(0)
    if kind == "mistral":
        model: Any = MistralModel(MistralConfig(pad_token_id=pad, sliding_window=None, **common))
    else:
        model = Qwen3Model(Qwen3Config(pad_token_id=pad, head_dim=16, **common))
    model.save_pretrained(hf)
    prompts = {"query": QWEN3_QUERY, "document": ""} if kind == "qwen3" else {}
    return _save_st(folder, hf, "lasttoken", True, prompts, max_seq_length=256)


def rename_weight(folder: Path, old: str, new: str) -> None:
    """Rename one weight in the folder's model.safetensors (a checkpoint the model no longer matches)."""
    from safetensors.torch import load_file, save_file

    path = next(folder.rglob("model.safetensors"))
    state = load_file(str(path))
    state[new] = state.pop(old)
    save_file(state, str(path), metadata={"format": "pt"})


def set_json(path: Path, **values: Any) -> None:
    """Update keys of a JSON file."""
    data = json.loads(path.read_text()) if path.exists() else {}
    data.update(values)
    path.write_text(json.dumps(data, indent=2))


def xlm_roberta(folder: Path) -> Path:
    """A BGE-M3-like folder: XLMRobertaModel weights only (no masked-LM head)."""
    from transformers import AutoTokenizer, XLMRobertaConfig, XLMRobertaModel

    torch.manual_seed(0)
    XLMRobertaModel(XLMRobertaConfig(vocab_size=30522, max_position_embeddings=130, **SMALL)).save_pretrained(folder)
    AutoTokenizer.from_pretrained(MINILM).save_pretrained(folder)
    return folder


def jina_v3_remote(folder: Path) -> Path:
    """A jina-embeddings-v3-like folder: its weights (``mixer.Wqkv``, ...) under a config that says
    ``xlm-roberta`` with remote code, as the hub checkpoint's does."""
    from transformers import AutoTokenizer, JinaEmbeddingsV3Config, JinaEmbeddingsV3Model

    torch.manual_seed(0)
    JinaEmbeddingsV3Model(
        JinaEmbeddingsV3Config(vocab_size=30522, max_position_embeddings=130, **SMALL)
    ).save_pretrained(folder)
    AutoTokenizer.from_pretrained(MINILM).save_pretrained(folder)
    set_json(
        folder / "config.json",
        model_type="xlm-roberta",
        architectures=["XLMRobertaLoRA"],
        auto_map={"AutoModel": "jinaai/xlm-roberta-flash-implementation--modeling_lora.XLMRobertaLoRA"},
    )
    return folder
