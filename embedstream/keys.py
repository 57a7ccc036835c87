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


def replies(gateway_id: str) -> str:
    """The reply stream of one gateway process, read by that process only."""
    return f"{PREFIX}:" + "{gw:" + gateway_id + "}:replies"
