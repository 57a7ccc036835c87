"""Redis ACL users for gateways and workers: the least each role needs.

The command lists come from reading every Redis call of the role, including the
commands its Lua scripts run (scripts run with the caller's permissions) and
what redis-py sends on its own (SCRIPT EXISTS/LOAD before EVALSHA; SELECT for a
database other than 0; on Redis 8, CLIENT MAINT_NOTIFICATIONS, whose refusal it
ignores). ``embedstream redis-acl`` prints them as ``ACL SETUSER``
lines; the README shows that output, and tests run a gateway and a worker as
these users (a test fails when the README and this module differ).
"""

from __future__ import annotations

from embedstream import keys

#: What both roles send: running the Lua scripts, and choosing the database.
_COMMON = ("evalsha", "script|exists", "script|load", "select")

#: role -> (key patterns, commands).
ROLES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # Admission and job scripts (XLEN, XADD, HGET, HSET, HMGET, EXISTS, EXPIRE),
    # the rate-limit script (TIME, GET, SET), the reply stream, the job store,
    # idempotency keys and the worker directory (with the oldest entry, for queue lag);
    # INFO replication when EMBEDSTREAM_REDIS_MIN_REPLICAS is set.
    "gateway": (
        (f"{keys.PREFIX}:*",),
        (
            *_COMMON,
            "del",
            "exists",
            "expire",
            "get",
            "hget",
            "hgetall",
            "hmget",
            "hset",
            "info",
            "lrange",
            "pexpireat",
            "set",
            "time",
            "xadd",
            "xdel",
            "xlen",
            "xrange",
            "xread",
            "xtrim",
            "zcount",
        ),
    ),
    # The model's streams and consumer group, heartbeats, replies to gateways,
    # job results (the RECORD script: HGET, HSETNX, HINCRBY, LLEN, RPUSH, ...),
    # lease renewal (XPENDING, XCLAIM) and capped dead letters (XADD, XLEN) in scripts.
    # Its model's load-failure record (SET with expiry, DEL once it serves) and profile (SET in the
    # heartbeat script).
    # Never a tenant's keys (idempotency, rate limits): a job's keys are {job:<tag>}:<id>:<what>,
    # its idempotency key {job:<tag>}:idem, which the pattern with two colons leaves out.
    "worker": (
        (f"{keys.PREFIX}:{{m:*}}:*", f"{keys.PREFIX}:{{job:*}}:*:*", f"{keys.PREFIX}:{{gw:*}}:replies"),
        (
            *_COMMON,
            "del",
            "hget",
            "hincrby",
            "hmget",
            "hset",
            "hsetnx",
            "llen",
            "pexpireat",
            "rpush",
            "set",
            "xack",
            "xadd",
            "xautoclaim",
            "xclaim",
            "xdel",
            "xgroup|create",
            "xgroup|delconsumer",
            "xinfo|consumers",
            "xlen",
            "xpending",
            "xrange",
            "xreadgroup",
            "zadd",
            "zrangebyscore",
            "zrem",
            "zremrangebyscore",
        ),
    ),
}

#: Default user names of the roles.
USERS = {"gateway": "embedstream-gateway", "worker": "embedstream-worker"}


def rules(role: str) -> list[str]:
    """The ACL rules of ``role``, without user name and password."""
    patterns, commands = ROLES[role]
    return [*(f"~{p}" for p in patterns), "resetchannels", "-@all", *(f"+{c}" for c in commands)]


def setuser(role: str, password: str, user: str = "") -> list[str]:
    """The ``ACL SETUSER`` command of ``role`` as arguments; ``reset`` first makes it rerunnable."""
    return ["ACL", "SETUSER", user or USERS[role], "reset", "on", f">{password}", *rules(role)]


def render() -> str:
    """Both roles' commands as lines for redis-cli, with password placeholders."""
    return "\n".join(" ".join(setuser(role, f"{role.upper()}_PASSWORD")) for role in ROLES) + "\n"
