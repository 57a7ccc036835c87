"""What an architecture serves by default, where its model card (not its folder) says so.

Real checkpoints leave some of their serving rules out of their folders: Nomic
Embed's task prefixes and its Matryoshka layer norm; the decoder embedders'
(e5-mistral-7b-instruct, Qwen3-Embedding) last-token pooling and query
instruction. The text-dense loader looks the model type up here; the folder's
own ``config_sentence_transformers.json`` prompts and the registry's come on top.
"""

from __future__ import annotations

from dataclasses import dataclass, field

NOMIC_PREFIXES = {
    "search_query": "search_query: ",
    "search_document": "search_document: ",
    "clustering": "clustering: ",
    "classification": "classification: ",
}


@dataclass(frozen=True, slots=True)
class Convention:
    """Defaults of one architecture."""

    #: Pooling for a plain transformers folder (no modules.json) where the registry names none.
    pooling: str = "mean"
    prompts: dict[str, str] = field(default_factory=dict)
    query_prompt: str = ""
    document_prompt: str = ""
    #: Matryoshka cuts layer-normalize the full vector first (then cut, then L2-normalize).
    matryoshka_layer_norm: bool = False
    #: The query prompt a registry ``instruction`` becomes ("" = the family takes none).
    instruction: str = ""


PLAIN = Convention()
NOMIC = Convention(
    pooling="mean",
    prompts=NOMIC_PREFIXES,
    query_prompt="search_query",
    document_prompt="search_document",
    matryoshka_layer_norm=True,
)
# e5-mistral-7b-instruct: "Instruct: {task}\nQuery: {q}"; Qwen3-Embedding: "...\nQuery:{q}". Documents plain.
MISTRAL = Convention(pooling="lasttoken", instruction="Instruct: {task}\nQuery: ")
QWEN3 = Convention(pooling="lasttoken", instruction="Instruct: {task}\nQuery:")

BY_MODEL_TYPE = {
    "nomic_bert": NOMIC,
    "mistral": MISTRAL,
    "llama": MISTRAL,
    "qwen2": QWEN3,
    "qwen3": QWEN3,
}


def of(model_type: str) -> Convention:
    """The convention of a transformers model type (plain where there is none)."""
    return BY_MODEL_TYPE.get(model_type, PLAIN)
