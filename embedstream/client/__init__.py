"""Python client SDK: ``Client`` (blocking) and ``AsyncClient`` (asyncio).

Importable without torch: it needs grpcio and numpy only. Vectors come back in input
order: float32 numpy arrays for dense models, lists of :class:`SparseVector` for sparse
(SPLADE) models, lists of (tokens, dimensions) arrays for multi-vector (ColBERT) models;
``embed_media`` gives a :class:`MediaEmbedding` per video or audio clip.
Every call that fails for good raises :class:`EmbedstreamError` (a ``grpc.RpcError``):
its ``str()`` is one line with the status name and the gateway's message or reason.
``api_key`` (default: ``EMBEDSTREAM_API_KEY``) is sent as ``authorization: Bearer <key>``
on every call; ``tls=TLS(...)``
speaks TLS, with a client certificate for gateways that require one. Calls retry ``UNAVAILABLE`` and
``RESOURCE_EXHAUSTED`` with capped exponential backoff and jitter, waiting at least
as long as a rate-limited call's ``retry-after-ms`` says; a stream that
breaks is reopened and re-sends only the requests not yet answered.

Modules: ``codec`` builds requests and decodes responses, ``base`` is what both clients share
above their channels (settings, the model default, each call's request), ``retry`` is the retry
policy, ``embeddings`` the result types, ``outputs`` what ``embed(outputs=...)`` returns, ``media``
video and audio clips and their segments, ``errors`` the one error type, ``channel`` the channel
options and auth interceptors, ``window`` a stream's unanswered requests and their feeders,
``jobs`` what following a job needs; ``sync`` and ``aio`` are the two thin clients.
"""

from embedstream.client.aio import AsyncClient, AsyncJobHandle
from embedstream.client.channel import CHANNEL_OPTIONS
from embedstream.client.codec import INPUT_TYPES, MAX_INPUTS, ranking
from embedstream.client.embeddings import Embeddings, SparseVector, vectors
from embedstream.client.errors import EmbedstreamError
from embedstream.client.media import Clip, MediaEmbedding, Sampling
from embedstream.client.outputs import Outputs
from embedstream.client.retry import RETRYABLE, Retry, retry_after
from embedstream.client.sync import Client, JobHandle
from embedstream.tls import TLS

__all__ = [
    "CHANNEL_OPTIONS",
    "INPUT_TYPES",
    "MAX_INPUTS",
    "RETRYABLE",
    "TLS",
    "AsyncClient",
    "AsyncJobHandle",
    "Client",
    "Clip",
    "Embeddings",
    "EmbedstreamError",
    "JobHandle",
    "MediaEmbedding",
    "Outputs",
    "Retry",
    "Sampling",
    "SparseVector",
    "ranking",
    "retry_after",
    "vectors",
]
