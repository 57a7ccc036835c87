"""Every Redis key embedstream uses, in one place.

Keys of one model share the hash tag ``{m:<model>}`` and keys of one gateway
share ``{gw:<id>}``, so each group lands in one Redis Cluster slot and the
Lua admission script and pipelines stay single-slot.
"""

from __future__ import annotations

PREFIX = "embedstream"
#: The consumer group every worker of a model joins.
GROUP = "workers"
#: Field name of the msgpack payload in every stream entry.
PAYLOAD = "p"


def model_tag(model: str) -> str:
    """The Redis Cluster hash tag shared by every key of ``model``."""
    return "{m:" + model + "}"


def queue(model: str) -> str:
    """The stream of work for ``model``, read by its consumer group."""
    return f"{PREFIX}:{model_tag(model)}:queue"


def dead_letters(model: str) -> str:
    """Entries that failed too often or could not be decoded."""
    return f"{PREFIX}:{model_tag(model)}:dead"


def workers(model: str) -> str:
    """Sorted set of live workers, scored by their last heartbeat (ms)."""
    return f"{PREFIX}:{model_tag(model)}:workers"


def model_info(model: str) -> str:
    """Hash a worker publishes on start: dimensions, max tokens, family."""
    return f"{PREFIX}:{model_tag(model)}:info"


def bulk(model: str) -> str:
    """The stream of async-job chunks for ``model``; read only when interactive work is done."""
    return f"{PREFIX}:{model_tag(model)}:bulk"


def job_tag(job_id: str) -> str:
    """The hash tag shared by every key of one job."""
    return "{job:" + job_id + "}"


def job_meta(job_id: str) -> str:
    """Hash: state, model, counts, times, chunk size of one job."""
    return f"{PREFIX}:{job_tag(job_id)}:meta"


def job_results(job_id: str) -> str:
    """Hash: chunk index -> the chunk's stored answer (``jobstore.encode_chunk``)."""
    return f"{PREFIX}:{job_tag(job_id)}:results"


def job_errors(job_id: str) -> str:
    """List: the first few error messages of failed chunks."""
    return f"{PREFIX}:{job_tag(job_id)}:errors"


def tenant_tag(tenant: str) -> str:
    """The hash tag shared by every key of one tenant."""
    return "{t:" + tenant + "}"


def idempotency(tenant: str, key: str) -> str:
    """String: the job id an idempotency key already created, for one tenant."""
    return f"{PREFIX}:{tenant_tag(tenant)}:idem:" + key


def rate(tenant: str) -> str:
    """String: the tenant's rate-limit state (GCRA theoretical arrival time, ms); expires when idle."""
    return f"{PREFIX}:{tenant_tag(tenant)}:rate"


def replies(gateway_id: str) -> str:
    """The reply stream of one gateway process, read by that process only."""
    return f"{PREFIX}:" + "{gw:" + gateway_id + "}:replies"
