"""TEI's JSON shapes: /tokenize, /decode and /classify (TEI's /predict), as protobuf requests and back.

As in :mod:`embedstream.gateway.compat`, requests become the gRPC API's
messages (``pb.TokenizeRequest``, ``pb.DecodeRequest``, ``pb.ClassifyRequest``)
and are validated by the functions gRPC calls use; only JSON types are checked
here. Answers keep text-embeddings-inference's shapes (bare lists), so its
clients work unchanged; our options are extra keys (``model``, ``truncate``,
``truncation_side``, ``top_k``, ``function_to_apply``, ``return_logits``,
``details``).
"""

from __future__ import annotations

from typing import Any

from embedstream.errors import InvalidArgument
from embedstream.gateway.compat import choice, flag, integer, string, token_ids, truncation_side
from embedstream.v1 import embedder_pb2 as pb

FUNCTIONS = {
    "softmax": pb.CLASSIFY_FUNCTION_SOFTMAX,
    "sigmoid": pb.CLASSIFY_FUNCTION_SIGMOID,
    "none": pb.CLASSIFY_FUNCTION_NONE,
}


def texts(body: dict[str, Any]) -> tuple[list[str], bool]:
    """TEI's ``inputs``: a string or a list of strings; and whether it was one string."""
    value = body.get("inputs")
    if isinstance(value, str):
        return [value], True
    if not isinstance(value, list):
        raise InvalidArgument("inputs: required, a string or a list of strings")
    for i, item in enumerate(value):
        if isinstance(item, list):
            raise InvalidArgument(f"inputs[{i}]: pairs of texts are not served; send one string per input")
        if not isinstance(item, str):
            raise InvalidArgument(f"inputs[{i}]: must be a string")
    return value, False


def tokenize_request(body: dict[str, Any]) -> tuple[pb.TokenizeRequest, bool]:
    """TEI's tokenize request (``inputs``, ``add_special_tokens``), and whether ``details`` were asked."""
    request = pb.TokenizeRequest(model=string(body, "model", ""), inputs=texts(body)[0])
    request.truncation_side = truncation_side(body)
    for name in ("add_special_tokens", "truncate"):
        if (value := flag(body, name)) is not None:
            setattr(request, name, value)
    return request, bool(flag(body, "details"))


def tokenize_body(response: pb.TokenizeResponse, details: bool) -> Any:
    """TEI's answer, a list of token lists (``start``/``stop`` null for special tokens); with
    ``details``, an object that also says each text's token count and whether the model cuts it."""
    lists = [
        [
            {
                "id": t.id,
                "text": t.text,
                "special": t.special,
                "start": None if t.special else t.start,
                "stop": None if t.special else t.stop,
                "token": t.token,
            }
            for t in found.tokens
        ]
        for found in response.results
    ]
    if not details:
        return lists
    results = [
        {"tokens": items, "count": len(items), "total": found.total, "truncated": found.truncated}
        for items, found in zip(lists, response.results)
    ]
    tokens = response.metadata.tokens
    return {
        "model": response.model,
        "max_input_tokens": response.max_input_tokens,
        "results": results,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def decode_request(body: dict[str, Any]) -> pb.DecodeRequest:
    """TEI's decode request: ``ids`` (one list of token ids, or a list of them), ``skip_special_tokens``."""
    value = body.get("ids")
    if not isinstance(value, list):
        raise InvalidArgument("ids: required, a list of token ids or a list of such lists")
    if value and all(isinstance(item, list) for item in value):
        sequences = [token_ids(item, f"ids[{i}]") for i, item in enumerate(value)]
    elif any(isinstance(item, list) for item in value):
        raise InvalidArgument("ids: a list of token ids, or a list of such lists, not both")
    else:
        sequences = [token_ids(value, "ids")]
    request = pb.DecodeRequest(model=string(body, "model", ""), inputs=[pb.TokenIds(ids=s) for s in sequences])
    if (skip := flag(body, "skip_special_tokens")) is not None:
        request.skip_special_tokens = skip
    return request


def classify_request(body: dict[str, Any]) -> tuple[pb.ClassifyRequest, bool]:
    """TEI's predict request (``inputs``, ``raw_scores``, ``truncate``, ``truncation_direction``) with
    the pipeline's ``top_k`` and ``function_to_apply``; and whether ``inputs`` was one string."""
    inputs, single = texts(body)
    function = choice(body, "function_to_apply", FUNCTIONS, pb.CLASSIFY_FUNCTION_DEFAULT)
    if flag(body, "raw_scores"):
        if function not in (pb.CLASSIFY_FUNCTION_DEFAULT, pb.CLASSIFY_FUNCTION_NONE):
            raise InvalidArgument("raw_scores: true asks for the logits; it contradicts function_to_apply")
        function = pb.CLASSIFY_FUNCTION_NONE
    request = pb.ClassifyRequest(
        model=string(body, "model", ""),
        inputs=inputs,
        top_k=integer(body, "top_k", 0) if body.get("top_k") is not None else 0,
        function=function,
        return_logits=bool(flag(body, "return_logits")),
    )
    if (truncate := flag(body, "truncate")) is not None:
        request.truncate = truncate
    request.truncation_side = truncation_side(body)
    return request, single


def classify_body(response: pb.ClassifyResponse, single: bool) -> Any:
    """TEI's answer: ``[{"label", "score"}]`` best first for one string, a list of those for a list."""
    out = []
    for result in response.results:
        labels = []
        for item in result.labels:
            entry: dict[str, Any] = {"label": item.label, "score": item.score}
            if item.HasField("logit"):
                entry["logit"] = item.logit
            labels.append(entry)
        out.append(labels)
    return out[0] if single else out
