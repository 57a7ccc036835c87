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
from redis.exceptions import ClusterDownError, ReadOnlyError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from embedstream.errors import ConfigError

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
