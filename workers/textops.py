"""Tokenize and Decode entries: answered from the model's vocabulary, without a forward pass.

The gateway holds no model, so these travel the model's queue like any work
and the worker answers them as soon as they are read (on the prep thread when
large), never through the batcher. An entry the model cannot answer (no
tokenizer, an id outside the vocabulary) gets INVALID_ARGUMENT naming the input.
"""

from __future__ import annotations

from typing import Any

from embedstream import replywire, wire
from embedstream.errors import Code
from embedstream.textwire import TokenList

Answer = tuple[list[Any], tuple[str, str] | None]


def answer(model: Any, job: wire.Job) -> Answer:
    """(one TokenList or text per input, None) or ([], (code, message)) for a tokenize or decode job."""
    vocabulary = model.vocabulary
    if vocabulary is None:
        return [], (Code.INVALID_ARGUMENT.value, f"model: {model.name} has no tokenizer to {job.kind} with")
    out: list[Any] = []
    for i, item in enumerate(job.inputs):
        if job.kind == "tokenize" and isinstance(item, str):
            out.append(vocabulary.tokenize(item, job.special_tokens, job.truncate, job.truncation_side))
        elif job.kind == "decode" and isinstance(item, list):
            if problem := _outside(vocabulary, item):
                return [], (Code.INVALID_ARGUMENT.value, f"inputs[{i}].{problem}")
            out.append(vocabulary.decode(item, skip_special=not job.special_tokens))
        else:
            wanted = "a text" if job.kind == "tokenize" else "token ids"
            return [], (Code.INVALID_ARGUMENT.value, f"inputs[{i}]: {job.kind} takes {wanted}")
    return out, None


def fill(reply: replywire.Reply, kind: str, results: list[Any]) -> None:
    """Put a tokenize or decode entry's answers into its reply."""
    if kind == "tokenize":
        lists: list[TokenList] = results
        reply.token_lists = lists
        reply.tokens = sum(len(t.ids) for t in lists)
        reply.truncated = sum(t.truncated for t in lists)
    else:
        reply.texts = [str(text) for text in results]


def _outside(vocabulary: Any, ids: list[int]) -> str:
    """Decode takes any number of ids, each within the vocabulary (an empty list decodes to "")."""
    bad = next((i for i in ids if i >= vocabulary.size), None)
    return "" if bad is None else f"ids: token id {bad} is outside the vocabulary (ids 0 to {vocabulary.size - 1})"
