"""Redis connections with bounded waits, so an outage turns into UNAVAILABLE fast.

One URL names the deployment:

* ``redis://[user:pass@]host:port/db`` (or ``rediss://`` for TLS, ``unix://``): one server;
* ``redis+cluster://[user:pass@]host:port[,host:port...]`` (``rediss+cluster://``): a Redis
  Cluster, found from any of the listed nodes. Every key of one model shares the hash tag
  ``{m:<model>}`` (one job: ``{job:<id>}``; one gateway: ``{gw:<id>}``), so each Lua script and
  multi-key command stays in one slot;
* ``redis+sentinel://[user:pass@]host:port[,host:port...]/<service>[/db]``: the primary
  that the Sentinels name for ``<service>``, followed
  through failovers. The password is the data nodes'; Sentinels themselves are reached
  without one unless ``sentinel_password=`` is given in the query.

TLS options (``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``, ...) go in the query string as
for redis-py's ``from_url``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    ClusterDownError,
    MasterDownError,
    NoPermissionError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from embedstream.errors import ConfigError, EmbedstreamError, ResourceExhausted, Unavailable, clip

log = logging.getLogger(__name__)

#: Errors that mean "Redis is not reachable right now" rather than a bad command: a
#: node down, a cluster slot moving, a replica that was primary a moment ago.
TRANSIENT = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
    TimeoutError,
    ClusterDownError,
    TryAgainError,
    ReadOnlyError,
)

#: Every way a Redis call can fail: what a background loop survives, and what :func:`refusal` maps.
REDIS_ERRORS = (RedisError, OSError, TimeoutError)

#: The retry hint (ms) sent with a refusal because Redis is full. The service cannot know when
#: memory frees (that takes an operator, or jobs expiring), so it is a pace, not a promise.
FULL_RETRY_MS = 1000

# Error codes (the reply's first word) of a server that is up but not taking this command now.
_NOT_NOW = {"READONLY", "LOADING", "MASTERDOWN", "BUSY", "NOREPLICAS", "TRYAGAIN", "CLUSTERDOWN", "MISCONF"}


def refusal(exc: BaseException, what: str = "Redis") -> EmbedstreamError:
    """The status a caller gets for a failed Redis call (``what`` names the store in the message).

    The one mapping of Redis errors: full (``OOM`` under ``maxmemory``) is RESOURCE_EXHAUSTED
    with a retry hint; unreachable, read-only (a replica), loading, busy or failing over is
    UNAVAILABLE; a command this service's Redis user may not run (ACL), or any other refusal, is
    UNAVAILABLE too and logged as an error, since only an operator can fix it. Never INTERNAL.
    """
    kind = type(exc).__name__
    code = str(exc).split(" ", 1)[0] if isinstance(exc, RedisError) else ""
    if isinstance(exc, OutOfMemoryError) or code == "OOM":
        return ResourceExhausted(
            f"{what} is full (Redis reached maxmemory) and refused the write; when memory frees is not "
            f"known to the service: retry with backoff, after {FULL_RETRY_MS} ms or more",
            retry_after_ms=FULL_RETRY_MS,
        )
    if isinstance(exc, (*TRANSIENT, BusyLoadingError, MasterDownError)) or code in _NOT_NOW:
        return Unavailable(
            f"{what} is unreachable or not taking writes now ({kind} {code}".rstrip() + "); retry shortly"
        )
    # A denial inside a script reads "ERR The user executing the script can't run this command" (7.0).
    denied = code in ("NOPERM", "NOAUTH", "WRONGPASS") or "user executing the script" in str(exc)
    if isinstance(exc, (NoPermissionError, AuthenticationError)) or denied:
        log.error("Redis refused this service's user (%s): %s", kind, clip(exc, 200))
        return Unavailable(f"{what} refused this service's Redis user ({code or kind}); an operator must fix its ACL")
    log.error("Redis refused a command (%s): %s", kind, clip(exc, 200))
    return Unavailable(f"{what} refused a command ({code or kind}); retry later")


async def call(awaitable: Any, timeout_s: float, what: str = "Redis") -> Any:
    """Await a Redis call for at most ``timeout_s``; any failure becomes its :func:`refusal`."""
    try:
        return await asyncio.wait_for(awaitable, timeout_s)
    except REDIS_ERRORS as exc:
        raise refusal(exc, what) from None


CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
SENTINEL_SCHEMES = ("redis+sentinel",)
SCHEMES = ("redis", "rediss", "unix", *CLUSTER_SCHEMES, *SENTINEL_SCHEMES)


def connect(url: str, timeout_s: float, block_s: float = 0.0, max_connections: int = 32) -> Any:
    """A client whose commands fail within ``timeout_s`` (+ ``block_s`` for XREAD BLOCK).

    redis-py retries failed commands by default with a backoff of seconds; that
    would turn an outage into a hang, so retries are off and callers decide.
    The pool is bounded: a burst of calls queues for a connection (up to
    ``timeout_s``) instead of opening hundreds of sockets.
    """
    bounded: dict[str, Any] = dict(
        socket_timeout=timeout_s + block_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
        decode_responses=False,
        health_check_interval=0,
    )
    scheme = urlsplit(url).scheme
    if scheme in CLUSTER_SCHEMES:
        nodes, options = _nodes(url)
        options.pop("db", None)
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in nodes],
            max_connections=max_connections,
            **options,
            **bounded,
        )
    if scheme in SENTINEL_SCHEMES:
        nodes, options = _nodes(url)
        service, db = _service(url)
        query = dict(parse_qsl(urlsplit(url).query))
        sentinel_auth = {"password": query["sentinel_password"]} if "sentinel_password" in query else {}
        options.pop("sentinel_password", None)
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            nodes,
            sentinel_kwargs={"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s, **sentinel_auth},
            **options,
            **bounded,
        )
        return sentinel.master_for(service, db=db, max_connections=max_connections)
    pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=timeout_s, **bounded)
    return aioredis.Redis(connection_pool=pool)


def _nodes(url: str) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """The ``host:port`` list of a cluster or Sentinel URL and the connection options it carries."""
    parts = urlsplit(url)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    nodes = []
    for item in hosts.split(","):
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"EMBEDSTREAM_REDIS_URL: {item!r} is not host:port")
        nodes.append((host.strip("[]"), int(port)))
    single = ("rediss" if parts.scheme.startswith("rediss") else "redis") + "://"
    single += (userinfo + "@" if userinfo else "") + f"{nodes[0][0]}:{nodes[0][1]}"
    single += "?" + parts.query if parts.query else ""
    options: dict[str, Any] = dict(parse_url(single))
    options.pop("host", None)
    options.pop("port", None)
    if "connection_class" in options:  # rediss: TLS on every node
        options.pop("connection_class")
        options["ssl"] = True
    return nodes, options


def _service(url: str) -> tuple[str, int]:
    """The Sentinel service name and db from the URL's path: ``/<service>[/<db>]``."""
    path = [unquote(p) for p in urlsplit(url).path.split("/") if p]
    if not path:
        raise ConfigError(
            "EMBEDSTREAM_REDIS_URL: a Sentinel URL names its service: redis+sentinel://host:port/<service>"
        )
    if len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ConfigError("EMBEDSTREAM_REDIS_URL: a Sentinel URL's path is /<service>[/<db>]")
    return path[0], int(path[1]) if len(path) == 2 else 0


async def replicated(redis: Any, replicas: int, timeout_s: float) -> bool:
    """True once ``replicas`` replicas have acknowledged every write the primary had taken
    when this was called (by replication offset, so the writes may have gone over any
    connection of the pool, unlike WAIT). A Redis Cluster is checked on every primary."""
    primaries = redis.get_primaries() if isinstance(redis, RedisCluster) else [None]
    deadline = time.monotonic() + timeout_s
    for node in primaries:
        target = None
        while True:
            info = await (redis.info("replication", target_nodes=node) if node else redis.info("replication"))
            if target is None:
                target = int(info.get("master_repl_offset", 0))
            offsets = [int(v["offset"]) for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]
            if sum(offset >= target for offset in offsets) >= replicas:
                break
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.005)
    return True


async def stop_tasks(tasks: Iterable[asyncio.Task[Any]], grace_s: float = 0.0, cancel_wait_s: float = 2.0) -> None:
    """End ``tasks``: let them finish by themselves for up to ``grace_s``, then cancel what is
    left and wait at most ``cancel_wait_s`` more. No wait is unbounded: cancelling a task
    blocked inside a redis-py read can hang, so a loop reading Redis is first asked to stop
    by its own flag (and given a grace of one blocking read); cancelling is the fallback."""
    pending = set(tasks)
    if pending and grace_s > 0:
        _, pending = await asyncio.wait(pending, timeout=grace_s)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=cancel_wait_s)
