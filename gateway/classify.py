"""Classify: requests checked, and the worker's scores as labels best first.

The worker runs the classifier and turns its logits into scores as
transformers' text-classification pipeline does; here each text's labels are
sorted by score (ties in id order, as the pipeline's stable sort leaves them)
and cut to ``top_k``.
"""

from __future__ import annotations

import numpy as np

from embedstream import replywire
from embedstream.errors import EmbedstreamError, InvalidArgument
from embedstream.gateway import tokens
from embedstream.gateway.directory import Directory
from embedstream.gateway.dispatch import Options, Request
from embedstream.gateway.shape import answered, checked
from embedstream.gateway.validation import check_text, count
from embedstream.registry import Registry
from embedstream.settings import Settings
from embedstream.v1 import embedder_pb2 as pb

FUNCTIONS = {
    pb.CLASSIFY_FUNCTION_DEFAULT: "",
    pb.CLASSIFY_FUNCTION_SOFTMAX: "softmax",
    pb.CLASSIFY_FUNCTION_SIGMOID: "sigmoid",
    pb.CLASSIFY_FUNCTION_NONE: "none",
}


def validate_classify(req: pb.ClassifyRequest, registry: Registry, settings: Settings, directory: Directory) -> Request:
    """A ready-to-enqueue Classify request."""
    spec = registry.resolve(req.model)
    if spec.family != "classify":
        raise InvalidArgument(f"model: {spec.name!r} is a {spec.family} model; Classify needs a classify model")
    count(len(req.inputs), settings, "inputs")
    if req.function not in FUNCTIONS:
        raise InvalidArgument(f"function: unknown value {req.function}")
    truncate = req.truncate if req.HasField("truncate") else True
    side = tokens.side(req.truncation_side, spec, directory)
    texts = [check_text(t, f"inputs[{i}]", spec, settings, directory, truncate) for i, t in enumerate(req.inputs)]
    options = Options(
        truncate=truncate, truncation_side=side, function=FUNCTIONS[req.function], return_logits=req.return_logits
    )
    return Request(spec, list(texts), options)


def respond_classify(
    request: pb.ClassifyRequest, valid: Request, reply: replywire.Reply, received: float
) -> pb.ClassifyResponse:
    """Each text's labels, best first (``top_k`` of them), with scores and, if asked, logits."""
    checked(valid, reply)
    if reply.labels is None:
        raise EmbedstreamError.from_code("INTERNAL", "worker answered Classify without labels")
    width = len(reply.labels)
    scores = np.frombuffer(reply.vectors, dtype="<f4").reshape(reply.count, width)
    logits = np.frombuffer(reply.logits, dtype="<f4").reshape(reply.count, width) if reply.logits else None
    results = []
    for row in range(reply.count):
        order = sorted(range(width), key=lambda j: -float(scores[row, j]))
        if request.top_k:
            order = order[: request.top_k]
        labels = [pb.LabelScore(label=reply.labels[j], score=float(scores[row, j]), id=j) for j in order]
        if logits is not None:
            for item, j in zip(labels, order):
                item.logit = float(logits[row, j])
        results.append(pb.Classification(labels=labels))
    return pb.ClassifyResponse(results=results, **answered(request.request_id, valid, reply, received))
