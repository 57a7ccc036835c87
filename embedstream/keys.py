"""Every Redis key embedstream uses, in one place.

Keys of one model share the hash tag ``{m:<model>}`` and keys of one gateway
share ``{gw:<id>}``, so each group lands in one Redis Cluster slot and the
Lua admission script and pipelines stay single-slot.
"""

from __future__ import annotations

import hashlib

PREFIX = "embedstream"
#: The consumer group every worker of a model joins.
GROUP = "workers"
#: Field name of the msgpack payload in every stream entry.
PAYLOAD = "p"


def model_tag(model: str) -> str:
    """The Redis Cluster hash tag shared by every key of ``model``."""
    return "{m:" + model + "}"


def queue(model: str) -> str:
    """The stream of interactive calls for ``model`` (Embed, Rerank, Classify, Tokenize, ...),
    read by its consumer group before its other lanes."""
    return f"{PREFIX}:{model_tag(model)}:queue"


def streams(model: str) -> str:
    """The stream of ``model``'s EmbedStream (and other bidi stream) requests: read after its
    interactive calls and before its job chunks, so a stream's window never queues ahead of a call."""
    return f"{PREFIX}:{model_tag(model)}:streams"


def lanes(model: str) -> tuple[str, str, str]:
    """Every stream of work for ``model``, in the order its workers serve them: interactive
    calls, stream requests, async-job chunks."""
    return queue(model), streams(model), bulk(model)


def dead_letters(model: str) -> str:
    """Entries that failed too often or could not be decoded."""
    return f"{PREFIX}:{model_tag(model)}:dead"


def workers(model: str) -> str:
    """Sorted set of live workers, scored by their last heartbeat (ms)."""
    return f"{PREFIX}:{model_tag(model)}:workers"


def model_info(model: str) -> str:
    """Hash a worker publishes on start: dimensions, max tokens, family."""
    return f"{PREFIX}:{model_tag(model)}:info"


def load_failure(model: str) -> str:
    """String: why the model's last worker failed to load it (:mod:`embedstream.loadfailure`); expires."""
    return f"{PREFIX}:{model_tag(model)}:failed"


def profile(model: str) -> str:
    """String: how the model is served, as its workers load it (:mod:`embedstream.profile`)."""
    return f"{PREFIX}:{model_tag(model)}:profile"


def bulk(model: str) -> str:
    """The stream of async-job chunks for ``model``; served after its calls and streams."""
    return f"{PREFIX}:{model_tag(model)}:bulk"


#: Characters of a job id that make its hash tag: a job made under an idempotency key starts
#: with that key's tag (``idempotency_tag``), so the key and the job's record share a slot
#: and one script creates both.
JOB_TAG = 16


def job_tag(job_id: str) -> str:
    """The hash tag shared by every key of one job (and by the idempotency key that made it)."""
    return "{job:" + job_id[:JOB_TAG] + "}"


def job_meta(job_id: str) -> str:
    """Hash: state, model, counts, times, chunk size of one job."""
    return f"{PREFIX}:{job_tag(job_id)}:{job_id}:meta"


def job_results(job_id: str) -> str:
    """Hash: chunk index -> the chunk's stored answer (``jobstore.encode_chunk``)."""
    return f"{PREFIX}:{job_tag(job_id)}:{job_id}:results"


def job_errors(job_id: str) -> str:
    """List: the first few error messages of failed chunks."""
    return f"{PREFIX}:{job_tag(job_id)}:{job_id}:errors"


def tenant_tag(tenant: str) -> str:
    """The hash tag shared by every key of one tenant."""
    return "{t:" + tenant + "}"


def idempotency_tag(tenant: str, key: str) -> str:
    """The first ``JOB_TAG`` characters of the id of every job ``tenant`` makes under idempotency ``key``."""
    return hashlib.blake2b(f"{tenant}\0{key}".encode(), digest_size=JOB_TAG // 2).hexdigest()


def idempotency(tenant: str, key: str) -> str:
    """Hash: the job (``job``) an idempotency key of one tenant made and the digest of its request
    (``digest``); it expires with that job, and shares its slot."""
    return f"{PREFIX}:" + "{job:" + idempotency_tag(tenant, key) + "}:idem"


def rate(tenant: str) -> str:
    """String: the tenant's rate-limit state (GCRA theoretical arrival time, ms); expires when idle."""
    return f"{PREFIX}:{tenant_tag(tenant)}:rate"


def replies(gateway_id: str) -> str:
    """The reply stream of one gateway process, read by that process only."""
    return f"{PREFIX}:" + "{gw:" + gateway_id + "}:replies"


def cache_record(model: str, digest: str) -> str:
    """String: one cached model output (``embedstream.cache``), expiring with the cache TTL."""
    return f"{PREFIX}:{model_tag(model)}:cache:" + digest


def cache_index(model: str) -> str:
    """Sorted set: the model's cached records (``<digest>:<bytes>``) by last use (ms), for eviction."""
    return f"{PREFIX}:{model_tag(model)}:cache-index"


def cache_bytes(model: str) -> str:
    """String: bytes the model's cached records take, kept within the cache budget."""
    return f"{PREFIX}:{model_tag(model)}:cache-bytes"
