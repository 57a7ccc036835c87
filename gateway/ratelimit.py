"""Per-tenant rate limits kept in Redis, so every gateway draws on one budget.

The limit is GCRA (the generic cell rate algorithm: a token bucket stored as one
timestamp, the "theoretical arrival time"), run as one Lua script on one key per
tenant (``keys.rate``, under the tenant's hash tag, so it works in Redis Cluster).
The script reads the clock of Redis, not of the gateway, so gateways with
skewed clocks still share one budget, and the key expires once the bucket is
full again, so idle tenants leave nothing behind.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from embedstream import keys, metrics
from embedstream.connections import call
from embedstream.errors import RateLimited

#: KEYS[1] = keys.rate(tenant). ARGV: milliseconds per input, burst (inputs), cost (inputs).
#: Returns 0 when the cost is admitted (and charged), else the milliseconds until it would be.
GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local interval = tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local charged = tat + interval * tonumber(ARGV[3])
-- Admitted when the bucket holds the cost; a cost above the burst is admitted
-- when the bucket is full, and the tenant then waits until it is paid off.
local allow_at = math.min(charged - interval * tonumber(ARGV[2]), tat)
if allow_at > now then return math.ceil(allow_at - now) end
redis.call('SET', KEYS[1], string.format('%.3f', charged), 'PX', math.ceil(charged - now) + 1)
return 0
"""


@dataclass(frozen=True, slots=True)
class Limit:
    """A tenant's budget: ``rate`` inputs per second (0 = unlimited) with room for ``burst`` at once."""

    rate: float
    burst: int

    def describe(self) -> str:
        """For messages: '50 inputs/s (burst 200)'."""
        return f"{self.rate:g} inputs/s (burst {self.burst})"


class RateLimiter:
    """Charges inputs to tenants' budgets in Redis."""

    def __init__(self, redis: Any, timeout_s: float) -> None:
        self._script = redis.register_script(GCRA)
        self._timeout_s = timeout_s

    async def wait_ms(self, tenant: str, limit: Limit, cost: int) -> int:
        """Charge ``cost`` inputs and return 0, or charge nothing and return the milliseconds to wait."""
        if limit.rate <= 0:
            return 0
        args = [1000.0 / limit.rate, limit.burst, max(1, cost)]
        wait = await call(
            self._script(keys=[keys.rate(tenant)], args=args), self._timeout_s, "the rate limiter (Redis)"
        )
        return int(wait)

    async def admit(self, tenant: str, limit: Limit, cost: int) -> None:
        """Charge ``cost`` now or raise RateLimited with the delay after which it would pass."""
        wait = await self.wait_ms(tenant, limit, cost)
        if wait:
            metrics.RATE_LIMITED.labels(tenant).inc()
            raise RateLimited(
                f"tenant {tenant!r} is over its rate limit of {limit.describe()}; retry in {wait} ms", wait
            )

    async def throttle(self, tenant: str, limit: Limit, cost: int, time_left: float | None) -> None:
        """Wait until ``cost`` is admitted (streams slow down instead of failing); RateLimited
        when that would take longer than ``time_left`` seconds."""
        while wait := await self.wait_ms(tenant, limit, cost):
            if time_left is not None and wait / 1000 > time_left:
                metrics.RATE_LIMITED.labels(tenant).inc()
                raise RateLimited(
                    f"tenant {tenant!r} is over its rate limit of {limit.describe()} and the call's deadline "
                    f"comes first; retry in {wait} ms",
                    wait,
                )
            await asyncio.sleep(wait / 1000)
            if time_left is not None:
                time_left -= wait / 1000
