"""The text operations' part of the queue wire format (``embedstream.wire`` calls it).

Token-id inputs, left truncation, Tokenize and Decode entries and Classify's
options and answers ride in the same msgpack maps as every job and reply, under
keys of their own; an entry or reply using any of them carries wire version 3 (or a
newer feature's used beside it), so a worker from before them refuses it. Tokenize answers each text with a
:class:`TokenList`. Every malformation raises ``ValueError``, which
``embedstream.wire`` and ``embedstream.replywire`` turn into their ``WireError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: One input: a text, an encoded image, or token ids.
Item = str | bytes | list[int]
#: What a queue entry asks of the worker: a forward pass, or the model's tokenizer only.
KINDS = ("embed", "tokenize", "decode")
SIDES = ("right", "left")
#: How a classifier's logits become scores ("" = the model's own choice).
FUNCTIONS = ("", "softmax", "sigmoid", "none")


@dataclass(frozen=True, slots=True)
class TokenList:
    """One text's tokens as the model reads them."""

    ids: list[int]
    #: The vocabulary string of each token ("##ing", "[CLS]").
    tokens: list[str]
    #: (start, stop) character offsets of each token, flattened; (0, 0) for special tokens.
    offsets: list[int]
    #: 1 for a special token the tokenizer added, else 0.
    special: list[int]
    #: Tokens of the whole text (special tokens included) before any cut.
    total: int
    #: The whole text is longer than the model's max input tokens.
    truncated: bool = False


def ids(value: Any) -> bool:
    """True for a list of token ids (unsigned 32-bit integers)."""
    return isinstance(value, list) and all(
        isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**32 for v in value
    )


def job_body(job: Any) -> dict[str, Any]:
    """The keys a job's text options add to its entry ({} when it uses none)."""
    body = {
        "kd": job.kind if job.kind != "embed" else "",
        "sd": job.truncation_side if job.truncation_side != "right" else "",
        "sp": not job.special_tokens,
        "fn": job.function,
        "lg": job.return_logits,
    }
    if not any(body.values()) and not any(isinstance(t, list) for t in job.inputs):
        return {}
    return {k: v for k, v in body.items() if v}


def job_options(body: dict[str, Any]) -> dict[str, Any]:
    """A job's text options from its entry."""
    return {
        "kind": _member(body.get("kd", "embed"), KINDS, "kd"),
        "truncation_side": _member(body.get("sd", "right"), SIDES, "sd"),
        "special_tokens": not _flag(body.get("sp", False), "sp"),
        "function": _member(body.get("fn", ""), FUNCTIONS, "fn"),
        "return_logits": _flag(body.get("lg", False), "lg"),
    }


def reply_body(reply: Any) -> dict[str, Any]:
    """The keys a reply's text answers add ({} when it has none)."""
    body: dict[str, Any] = {}
    if reply.token_lists is not None:
        body["tl"] = [
            {"i": t.ids, "s": t.tokens, "o": t.offsets, "p": t.special, "n": t.total, "x": t.truncated}
            for t in reply.token_lists
        ]
    for key, value in (("dt", reply.texts), ("lb", reply.labels)):
        if value is not None:
            body[key] = value
    if reply.logits:
        body["lg"] = reply.logits
    return body


def reply_fields(body: dict[str, Any]) -> dict[str, Any]:
    """The reply's text answers, by field name, from its body."""
    logits = body.get("lg", b"")
    if not isinstance(logits, bytes):
        raise ValueError("field 'lg' must be bytes")
    lists = body.get("tl")
    return {
        "token_lists": None if lists is None else _token_lists(lists),
        "texts": _strings(body.get("dt"), "dt"),
        "labels": _strings(body.get("lb"), "lb"),
        "logits": logits,
    }


def size_problem(reply: Any) -> str:
    """Why a reply's text answers do not fit its count and dimensions ("" when they do)."""
    for name, items in (("token lists", reply.token_lists), ("texts", reply.texts)):
        if items is not None and len(items) != reply.count:
            return f"reply {name} do not match count"
    if reply.labels is not None and len(reply.labels) != reply.dimensions:
        return "reply labels do not match dimensions"
    if reply.logits and len(reply.logits) != len(reply.vectors):
        return "reply logits do not match the scores"
    return ""


def _token_lists(value: Any) -> list[TokenList]:
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise ValueError("field 'tl' must be a list of maps")
    out = []
    for item in value:
        token_ids, offsets, special = (_counts(item.get(k), k) for k in ("i", "o", "p"))
        tokens = _strings(item.get("s"), "s")
        total, truncated = item.get("n"), item.get("x", False)
        if isinstance(total, bool) or not isinstance(total, int) or total < 0 or not isinstance(truncated, bool):
            raise ValueError("a token list's total must be a count and its truncated flag a bool")
        if tokens is None or not len(token_ids) == len(tokens) == len(special) == len(offsets) / 2:
            raise ValueError("a token list's ids, strings, offsets and flags differ in length")
        out.append(TokenList(token_ids, tokens, offsets, special, total, truncated))
    return out


def _counts(value: Any, key: str) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
        raise ValueError(f"token list field {key!r} must be a list of non-negative integers")
    return value


def _strings(value: Any, key: str) -> list[str] | None:
    if value is not None and (not isinstance(value, list) or not all(isinstance(t, str) for t in value)):
        raise ValueError(f"field {key!r} must be a list of strings")
    return value


def _flag(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"field {key!r} must be bool")
    return value


def _member(value: Any, allowed: tuple[str, ...], key: str) -> str:
    if value not in allowed:
        raise ValueError(f"field {key!r} must be one of {list(allowed)}")
    return str(value)
