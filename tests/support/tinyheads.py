"""Tiny random models of the families with their own heads, laid out as the real checkpoints are.

BGE-M3 (XLM-R + ``sparse_linear.pt`` + ``colbert_linear.pt``), SigLIP with a
SentencePiece tokenizer, PyLate ColBERT folders, Qwen3-Reranker and Jina
Embeddings v3: the same architecture classes, weight names, folder files and
tokenizer types as the real models, at a few thousand parameters, with
tokenizers trained offline (:mod:`tests.support.spm`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tests.support import spm

TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}


def bge_m3(folder: Path) -> Path:
    """An XLM-R BGE-M3 folder: model.safetensors, sparse/ColBERT heads, XLM-R SentencePiece tokenizer,
    and the sentence-transformers files the real one ships (CLS pooling, Normalize)."""
    from transformers import XLMRobertaConfig, XLMRobertaModel

    tok = spm.xlm_roberta_tokenizer(folder, max_length=512)
    cfg = XLMRobertaConfig(
        vocab_size=len(tok),
        max_position_embeddings=514,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        type_vocab_size=1,
        **TINY,
    )
    torch.manual_seed(0)
    XLMRobertaModel(cfg).save_pretrained(folder)
    torch.save(torch.nn.Linear(32, 1).state_dict(), folder / "sparse_linear.pt")
    torch.save(torch.nn.Linear(32, 32).state_dict(), folder / "colbert_linear.pt")
    spm.write_json(folder / "sentence_bert_config.json", {"max_seq_length": 512, "do_lower_case": False})
    st_pooling(folder, "pooling_mode_cls_token")
    return folder


def st_pooling(folder: Path, mode: str) -> None:
    """The sentence-transformers files of a Transformer + Pooling (``mode``) + Normalize folder."""
    (folder / "1_Pooling").mkdir(exist_ok=True)
    spm.write_json(folder / "1_Pooling" / "config.json", {"word_embedding_dimension": 32, mode: True})
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    spm.write_json(folder / "modules.json", modules)


def flag_m3(folder: Path) -> Any:
    """FlagEmbedding's BGEM3FlagModel on ``folder`` (fp32, CPU).

    FlagEmbedding's package ``__init__`` imports its decoder rerankers, which
    need transformers 4 modules; the embedder itself runs on transformers 5, so
    it is imported without running the packages' ``__init__`` files.
    """
    import importlib.util
    import sys
    import types

    found = importlib.util.find_spec("FlagEmbedding")
    assert found is not None and found.submodule_search_locations
    root = Path(next(iter(found.submodule_search_locations)))
    for name in ("FlagEmbedding", "FlagEmbedding.inference", "FlagEmbedding.inference.embedder"):
        if name not in sys.modules:
            package = types.ModuleType(name)
            package.__path__ = [str(root.joinpath(*name.split(".")[1:]))]
            sys.modules[name] = package
    name = "FlagEmbedding.inference.embedder.encoder_only"
    if name not in sys.modules:
        package = types.ModuleType(name)
        package.__path__ = [str(root / "inference" / "embedder" / "encoder_only")]
        sys.modules[name] = package
    from FlagEmbedding.inference.embedder.encoder_only.m3 import M3Embedder

    return M3Embedder(str(folder), use_fp16=False, devices="cpu", normalize_embeddings=True)


def siglip(folder: Path) -> Path:
    """A SiglipModel folder as google/siglip-so400m ships it: SentencePiece ``spiece.model`` (SiglipTokenizer),
    64 text positions, the processor's config."""
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipProcessor, SiglipTokenizer

    # bos_token_id: SiglipTextConfig's default (49406) is outside a small vocabulary; the real one has no BOS.

    spiece = spm.train(folder / "spiece.model")
    tok = SiglipTokenizer(vocab_file=str(spiece), model_max_length=64)
    cfg = SiglipConfig(
        text_config={
            "vocab_size": len(tok),
            "max_position_embeddings": 64,
            "pad_token_id": 1,
            "eos_token_id": 1,
            "bos_token_id": None,
            **TINY,
        },
        vision_config={"image_size": 32, "patch_size": 8, **TINY},
    )
    torch.manual_seed(0)
    SiglipModel(cfg).save_pretrained(folder)
    processor = SiglipProcessor(image_processor=SiglipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tok)
    processor.save_pretrained(folder)
    return folder


def pylate_colbert(folder: Path, query_length: int = 12, document_length: int = 40) -> Path:
    """A ColBERT folder as PyLate saves one (lightonai/colbertv2.0 layout): BERT with the ``[Q] ``/``[D] ``
    marker tokens added, ``1_Dense`` (pylate.models.Dense, no bias) to 16, and PyLate's settings
    (query expansion, punctuation skiplist) in ``config_sentence_transformers.json``.

    Written by hand: PyLate 1.6 builds new models through sentence-transformers 5 APIs (it pins 5.3)
    and fails under 6.2 while creating one, but loads and encodes saved folders."""
    import string

    from safetensors.torch import save_file
    from transformers import AutoTokenizer, BertModel

    from tests.support.models import MINILM
    from tests.support.tinymodels import _bert_config

    tok = AutoTokenizer.from_pretrained(MINILM)
    tok.add_tokens(["[Q] ", "[D] "])
    torch.manual_seed(0)
    model = BertModel(_bert_config())
    model.resize_token_embeddings(len(tok))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    spm.write_json(
        folder / "sentence_bert_config.json", {"max_seq_length": document_length - 1, "do_lower_case": False}
    )
    (folder / "1_Dense").mkdir(exist_ok=True)
    spm.write_json(
        folder / "1_Dense" / "config.json",
        {
            "in_features": 32,
            "out_features": 16,
            "bias": False,
            "activation_function": "torch.nn.modules.linear.Identity",
            "use_residual": False,
        },
    )
    save_file({"linear.weight": torch.randn(16, 32) * 0.2}, str(folder / "1_Dense" / "model.safetensors"))
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Dense", "type": "pylate.models.Dense.Dense"},
    ]
    spm.write_json(folder / "modules.json", modules)
    settings = {
        "prompts": {},
        "default_prompt_name": None,
        "similarity_fn_name": "MaxSim",
        "query_prefix": "[Q] ",
        "document_prefix": "[D] ",
        "query_length": query_length,
        "document_length": document_length,
        "attend_to_expansion_tokens": False,
        "skiplist_words": list(string.punctuation),
        "do_query_expansion": True,
    }
    spm.write_json(folder / "config_sentence_transformers.json", settings)
    return folder


def qwen3_reranker(folder: Path) -> Path:
    """A Qwen3ForCausalLM folder laid out as Qwen/Qwen3-Reranker-0.6B (Qwen2 BPE tokenizer with its chat tokens)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tok = spm.qwen2_tokenizer(folder, ["<|im_start|>", "<|im_end|>", "<think>", "</think>"])
    cfg = Qwen3Config(
        vocab_size=len(tok),
        head_dim=16,
        num_key_value_heads=1,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
        architectures=["Qwen3ForCausalLM"],
        **TINY,
    )
    torch.manual_seed(0)
    Qwen3ForCausalLM(cfg).save_pretrained(folder)
    return folder


#: jina-embeddings-v3's tasks and the instructions its config.json and config_sentence_transformers.json declare.
JINA_TASKS = {
    "retrieval.query": "Represent the query for retrieving evidence documents: ",
    "retrieval.passage": "Represent the document for retrieval: ",
    "separation": "",
    "classification": "",
    "text-matching": "",
}
#: What the LoRA adapters of jina-embeddings-v3 wrap: every Linear and Embedding of the encoder.
JINA_LORA_TARGETS = ["word_embeddings", "token_type_embeddings", "q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2"]


def jina_v3(folder: Path, tasks: dict[str, str] | None = None) -> Path:
    """A jina-embeddings-v3 folder as transformers reads it natively: JinaEmbeddingsV3Model saved with the
    original checkpoint's weight names (``emb_ln``, ``encoder.layers.N.mixer.Wqkv``, ...; transformers
    converts them), an XLM-R SentencePiece tokenizer, ``lora_adaptations``/``task_instructions``/
    ``matryoshka_dimensions`` in config.json, one PEFT LoRA adapter (rank 4, alpha 1) per task in a
    subfolder (``retrieval_query``, ...), and the sentence-transformers files (prompts, mean pooling)."""
    import re

    from peft import LoraConfig, get_peft_model
    from transformers import JinaEmbeddingsV3Config, JinaEmbeddingsV3Model

    tasks = JINA_TASKS if tasks is None else tasks
    tok = spm.xlm_roberta_tokenizer(folder, max_length=8194)
    cfg = JinaEmbeddingsV3Config(
        vocab_size=len(tok),
        max_position_embeddings=8194,
        pad_token_id=tok.pad_token_id,
        lora_adaptations=list(tasks),
        task_instructions=tasks,
        matryoshka_dimensions=[4, 8, 16, 32],
        **TINY,
    )
    torch.manual_seed(0)
    JinaEmbeddingsV3Model(cfg).save_pretrained(folder)
    for k, task in enumerate(tasks):
        lora = LoraConfig(r=4, lora_alpha=1, lora_dropout=0.0, target_modules=JINA_LORA_TARGETS)
        adapted = get_peft_model(JinaEmbeddingsV3Model.from_pretrained(folder), lora)
        generator = torch.Generator().manual_seed(100 + k)
        with torch.no_grad():  # PEFT starts B (or the embedding's A) at zero: a no-op adapter would prove nothing
            for name, param in adapted.named_parameters():
                if "lora_" in name:
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
        adapted.save_pretrained(folder / re.sub(r"[^0-9A-Za-z_]", "_", task))
    spm.write_json(folder / "config_sentence_transformers.json", {"prompts": tasks, "default_prompt_name": None})
    st_pooling(folder, "pooling_mode_mean_tokens")
    return folder


def jina_v3_reference(folder: Path, task: str | None) -> Any:
    """transformers' JinaEmbeddingsV3Model with ``task``'s adapter active (PEFT, as ``load_adapter`` does), or none."""
    import re

    from peft import PeftModel
    from transformers import JinaEmbeddingsV3Model

    base = JinaEmbeddingsV3Model.from_pretrained(folder)
    if task is None:
        return base.eval()
    return PeftModel.from_pretrained(base, str(folder / re.sub(r"[^0-9A-Za-z_]", "_", task))).eval()
