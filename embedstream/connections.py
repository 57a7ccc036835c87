"""Redis connections with bounded waits, so an outage turns into UNAVAILABLE fast."""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

#: Errors that mean "Redis is not reachable right now" rather than a bad command.
TRANSIENT = (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError)


def connect(url: str, timeout_s: float, block_s: float = 0.0, max_connections: int = 32) -> aioredis.Redis:
    """A client whose commands fail within ``timeout_s`` (+ ``block_s`` for XREAD BLOCK).

    redis-py retries failed commands by default with a backoff of seconds; that
    would turn an outage into a hang, so retries are off and callers decide.
    The pool is bounded: a burst of calls queues for a connection (up to
    ``timeout_s``) instead of opening hundreds of sockets.
    """
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout_s,
        socket_timeout=timeout_s + block_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
        decode_responses=False,
        health_check_interval=0,
    )
    return aioredis.Redis(connection_pool=pool)
