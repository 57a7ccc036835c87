"""What ``Client`` and ``AsyncClient`` share above their channels: settings, the model default, each call's request.

The twins differ only in how they wait (a blocking channel and ``time.sleep``, or
``grpc.aio`` and ``await``); everything a call builds before it is sent is here or in
``codec``, once, so the two cannot drift.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from embedstream.client import codec, media
from embedstream.client.errors import Explainer
from embedstream.client.retry import Retry
from embedstream.tls import TLS
from embedstream.v1 import embedder_pb2 as pb
from embedstream.v1 import jobs_pb2 as jpb

#: The longest an upload may stream: it is not retried, so it gets one long deadline.
UPLOAD_TIMEOUT_S = 3600


class BaseClient:
    """A client's settings and the requests its calls send; the twins add the channel and the waiting."""

    def __init__(self, target: str, model: str, timeout: float, retry: Retry | None, tls: TLS | None) -> None:
        self.model = model
        self.timeout = timeout
        self.retry = retry or Retry()
        self._explain = Explainer(target, tls)

    def _name(self, model: str | None) -> str:
        """The model a call names: its own, else the client's."""
        return model if model is not None else self.model

    @property
    def _upload_timeout(self) -> float:
        return max(self.timeout, UPLOAD_TIMEOUT_S)

    def _media_requests(
        self,
        clips: Sequence[media.Clip],
        kind: str,
        model: str | None,
        sampling: media.Sampling,
        rate: float,
        normalize: bool | None,
    ) -> Iterator[pb.EmbedRequest]:
        """``embed_media``'s requests: one per clip."""
        return media.requests(self._name(model), kind, clips, sampling.message(), normalize, rate)

    def _job_spec(
        self,
        model: str | None,
        idempotency_key: str,
        ttl_seconds: int,
        normalize: bool | None,
        truncate: bool | None,
        cache: str = "default",
    ) -> jpb.JobSpec:
        """The JobSpec of a job call."""
        return codec.job_spec(self._name(model), idempotency_key, ttl_seconds, normalize, truncate, cache)
