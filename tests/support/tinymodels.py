"""Tiny randomly initialised models of every family, saved the way users' real models are.

Each builder saves a model to a folder with its own library (open_clip,
transformers ``save_pretrained``, sentence-transformers ``save``); the service
then loads it through the same loading code a real model takes. The MiniLM
package's real WordPiece tokenizer and open_clip's real CLIP BPE vocabulary keep
tokenization realistic.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path
from typing import Any

import torch

from tests.support.models import MINILM

TINY_OPEN_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def open_clip_model(folder: Path) -> Path:
    """An open_clip model folder (``open_clip_config.json`` + safetensors)."""
    import open_clip  # type: ignore[import-untyped]
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    preprocess = {"size": 32, "mean": CLIP_MEAN, "std": CLIP_STD, "interpolation": "bicubic", "resize_mode": "shortest"}
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": TINY_OPEN_CLIP, "preprocess_cfg": preprocess})
    )
    torch.manual_seed(0)
    model = open_clip.create_model(f"local-dir:{folder}")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return folder


def _clip_tokenizer(length: int) -> Any:
    from open_clip.tokenizer import bytes_to_unicode
    from transformers import CLIPTokenizer

    spec = importlib.util.find_spec("open_clip")
    assert spec is not None and spec.submodule_search_locations
    bpe = Path(next(iter(spec.submodule_search_locations))) / "bpe_simple_vocab_16e6.txt.gz"
    merges = [tuple(x.split()) for x in gzip.open(bpe).read().decode().split("\n")[1 : 49152 - 256 - 2 + 1]]
    vocab = list(bytes_to_unicode().values())
    vocab += [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={v: i for i, v in enumerate(vocab)}, merges=merges, model_max_length=length)


def hf_clip_model(folder: Path) -> Path:
    """A transformers CLIPModel folder with its processor (real CLIP BPE vocabulary)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTextConfig, CLIPVisionConfig

    tok = _clip_tokenizer(16)
    cfg = CLIPConfig(
        projection_dim=16,
        text_config=CLIPTextConfig(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=16,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        ),
        vision_config=CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
    )
    torch.manual_seed(0)
    CLIPModel(cfg).save_pretrained(folder)
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=processor, tokenizer=tok).save_pretrained(folder)
    return folder


def siglip_model(folder: Path) -> Path:
    """A transformers SiglipModel folder (MiniLM's WordPiece tokenizer, 16 text positions)."""
    from transformers import AutoTokenizer, SiglipConfig, SiglipImageProcessor, SiglipModel

    cfg = SiglipConfig(
        text_config={
            "vocab_size": 30522,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 16,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
    )
    torch.manual_seed(0)
    SiglipModel(cfg).save_pretrained(folder)
    AutoTokenizer.from_pretrained(MINILM, model_max_length=16).save_pretrained(folder)
    SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def clap_model(folder: Path, fused: bool = False) -> Path:
    """A transformers ClapModel folder laid out as laion/clap-htsat-unfused (``fused``: -fused): HTSAT audio
    tower on 64 mel bins at 48 kHz (10 s windows, ``rand_trunc`` or ``fusion``, ``repeatpad``), RoBERTa text
    tower with a byte-level BPE tokenizer (a tiny vocabulary), ``ClapProcessor`` saved beside it."""
    from open_clip.tokenizer import bytes_to_unicode
    from transformers import (
        ClapAudioConfig,
        ClapConfig,
        ClapFeatureExtractor,
        ClapModel,
        ClapProcessor,
        ClapTextConfig,
        RobertaTokenizer,
    )

    folder.mkdir(parents=True, exist_ok=True)
    merges = ["\u0120 t", "\u0120t h", "\u0120th e", "\u0120 d", "o g", "\u0120d og"]
    words = ["\u0120t", "\u0120th", "\u0120the", "\u0120d", "og", "\u0120dog"]
    tokens = ["<s>", "<pad>", "</s>", "<unk>", *bytes_to_unicode().values(), *words, "<mask>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tok = RobertaTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=512)
    text = ClapTextConfig(
        vocab_size=len(tokens),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=514,
        type_vocab_size=1,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    )
    audio = ClapAudioConfig(
        patch_embeds_hidden_size=16,
        depths=[1, 1],
        num_attention_heads=[1, 2],
        hidden_size=32,
        enable_fusion=fused,
        fusion_type="aff_2d" if fused else None,
    )
    torch.manual_seed(0)
    ClapModel(ClapConfig(text_config=text, audio_config=audio, projection_dim=16)).save_pretrained(folder)
    truncation = "fusion" if fused else "rand_trunc"
    extractor = ClapFeatureExtractor(frequency_min=50, frequency_max=14000, truncation=truncation)
    ClapProcessor(feature_extractor=extractor, tokenizer=tok).save_pretrained(folder)
    return folder


def _bert_config(**kw: Any) -> Any:
    from transformers import BertConfig

    tiny = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
    return BertConfig(vocab_size=30522, max_position_embeddings=128, **(tiny | kw))


def bert(folder: Path, head: str, **config: Any) -> Path:
    """A tiny BERT: 'dense' (BertModel), 'splade' (BertForMaskedLM), 'xenc' (one-label classifier);
    ``config`` overrides its BertConfig (``hidden_size=384`` for a model with Matryoshka sizes to 256)."""
    from transformers import AutoTokenizer, BertForMaskedLM, BertForSequenceClassification, BertModel

    torch.manual_seed(0)
    if head == "splade":
        model: Any = BertForMaskedLM(_bert_config(**config))
        # Random MLM logits are ~N(0, 0.1): shift the bias so ~0.1% stay > 0 (a sparse output).
        with torch.no_grad():
            model.cls.predictions.bias.fill_(-0.35)
    elif head == "xenc":
        model = BertForSequenceClassification(_bert_config(num_labels=1, **config))
    else:
        model = BertModel(_bert_config(**config))
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(MINILM).save_pretrained(folder)
    return folder


def classifier(folder: Path, labels: list[str], multi_label: bool = False) -> Path:
    """A tiny BertForSequenceClassification with ``labels`` (id2label), single- or multi-label
    (config ``problem_type``); its head's weights scaled up so the labels' scores spread apart."""
    from transformers import AutoTokenizer, BertForSequenceClassification

    torch.manual_seed(0)
    config = _bert_config(
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        problem_type="multi_label_classification" if multi_label else "single_label_classification",
    )
    model = BertForSequenceClassification(config)
    with torch.no_grad():
        model.classifier.weight.mul_(50)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(MINILM).save_pretrained(folder)
    return folder


def sentence_transformer(
    folder: Path,
    pooling: str = "mean",
    dense: bool = False,
    normalize: bool = True,
    max_seq_length: int = 128,
    **config: Any,
) -> Path:
    """A sentence-transformers folder: tiny BERT, the given pooling, optional Dense (to 16, tanh) and Normalize;
    ``config`` overrides the BERT's config (``hidden_size=128``: a 16 MB model.safetensors)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling, Transformer

    hf = bert(folder.parent / f"{folder.name}-hf", "dense", **config)
    transformer = Transformer(str(hf), max_seq_length=max_seq_length)
    modules: list[torch.nn.Module] = [transformer, Pooling(transformer.get_embedding_dimension(), pooling_mode=pooling)]
    if dense:
        modules.append(Dense(transformer.get_embedding_dimension(), 16, activation_function=torch.nn.Tanh()))
    if normalize:
        modules.append(Normalize())
    SentenceTransformer(modules=modules, device="cpu").save(str(folder))
    return folder


def colbert(folder: Path) -> Path:
    """A sentence-transformers MultiVectorEncoder folder (Dense to 128, punctuation skiplist)."""
    import string

    from sentence_transformers import MultiVectorEncoder

    hf = bert(folder.parent / f"{folder.name}-hf", "dense")
    torch.manual_seed(0)
    model = MultiVectorEncoder(str(hf), device="cpu")
    for module in model:
        if type(module).__name__ == "MultiVectorMask":
            module.skiplist_words = list(string.punctuation)
    model.save(str(folder))
    return folder


def build_all(root: Path) -> dict[str, Path]:
    """Every tiny model under ``root``, by family key."""
    return {
        "st": sentence_transformer(root / "st"),
        "open_clip": open_clip_model(root / "open_clip"),
        "hf_clip": hf_clip_model(root / "hf_clip"),
        "siglip": siglip_model(root / "siglip"),
        "splade": bert(root / "splade", "splade"),
        "colbert": colbert(root / "colbert"),
        "rerank": bert(root / "rerank", "xenc"),
    }


def sparse_and_colbert(root: Path) -> tuple[dict[str, Path], str]:
    """A tiny SPLADE and a tiny ColBERT under ``root``, and a registry serving them as splade and colbert."""
    models = {"splade": bert(root / "splade", "splade"), "colbert": colbert(root / "colbert")}
    registry = f"""
default = "splade"

[models.splade]
family = "sparse"
path = "{models["splade"]}"

[models.colbert]
family = "multi-vector"
path = "{models["colbert"]}"
"""
    return models, registry
