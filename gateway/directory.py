"""What the gateway knows of Redis and the workers, refreshed once a second.

One background task pings Redis and reads, per model, the live workers, the
queue depth and the info the workers publish. Calls consult this snapshot
instead of paying a round trip; the health service mirrors it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from embedstream import clock, heartbeat, keys, loadfailure, metrics, profile
from embedstream.connections import REDIS_ERRORS, TRANSIENT, stop_tasks
from embedstream.errors import FailedPrecondition
from embedstream.loops import Mishaps
from embedstream.registry import Registry

log = logging.getLogger(__name__)

REFRESH_S = 0.5


@dataclass(slots=True)
class ModelState:
    """One model as last seen in Redis."""

    workers: int = 0
    queue_depth: int = 0
    #: Age of the oldest unfinished entry, seconds.
    lag_s: float = 0.0
    dimensions: int = 0
    max_input_tokens: int = 0
    normalizes: bool = False
    #: Why its last worker could not load it ("" = no failure on record).
    failure: str = ""
    #: How its workers serve it, once one has loaded it.
    profile: profile.Profile | None = None
    #: Whether its workers read a stream of their own for stream requests (``keys.streams``).
    streams_lane: bool = False

    def learn(self, published: heartbeat.ModelInfo | None) -> None:
        """Take what the model's workers published (nothing where none has yet)."""
        if published is not None:
            self.dimensions = published.dimensions
            self.max_input_tokens = published.max_input_tokens
            self.normalizes = published.normalizes
            self.streams_lane = published.lanes >= heartbeat.LANES


class Directory:
    """A snapshot of Redis reachability and per-model worker state."""

    def __init__(self, redis: object, registry: Registry, liveness_s: float) -> None:
        self._redis = redis
        self.registry = registry
        self.liveness_s = liveness_s
        self.redis_ok = False
        self.states: dict[str, ModelState] = {name: ModelState() for name in registry.models}
        self._listeners: list[Callable[[], Awaitable[None]]] = []
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self._mishaps = Mishaps("directory")

    def on_change(self, listener: Callable[[], Awaitable[None]]) -> None:
        """Call ``listener`` after every refresh."""
        self._listeners.append(listener)

    async def start(self) -> None:
        """Take a first snapshot, then keep refreshing in the background."""
        await self.refresh()
        self._task = asyncio.create_task(self._loop(), name="directory")

    async def stop(self) -> None:
        """Stop refreshing."""
        if self._task:
            await stop_tasks([self._task])

    async def refresh(self) -> None:
        """Read Redis once; on failure mark it unreachable."""
        now_ms = clock.now_ms()
        pipe = self._redis.pipeline(transaction=False)  # type: ignore[attr-defined]
        names = list(self.registry.models)
        for name in names:
            heartbeat.count_live(pipe, name, self.liveness_s)
            pipe.xlen(keys.queue(name))
            pipe.xlen(keys.streams(name))
            heartbeat.read_info(pipe, name)
            pipe.xrange(keys.queue(name), count=1)
            pipe.xrange(keys.streams(name), count=1)
            loadfailure.read(pipe, name)
            profile.read(pipe, name)
        try:
            results = await pipe.execute()
            self.redis_ok = True
            self._mishaps.recovered()
        except REDIS_ERRORS as exc:
            self._mishaps.failed(exc)
            # Only an unreachable Redis fails the calls waiting on it; a refused read (a command
            # the ACL denies, say) keeps the last snapshot until a refresh goes through.
            if isinstance(exc, TRANSIENT):
                self.redis_ok = False
            results = None
        if results is not None:
            for i, name in enumerate(names):
                live, depth, stream_depth, info, oldest, oldest_streamed, failed, served = results[8 * i : 8 * i + 8]
                state = self.states[name]
                # Interactive calls and stream requests both wait for the model: the depth counts both.
                state.workers, state.queue_depth = int(live), int(depth) + int(stream_depth)
                state.learn(heartbeat.decode_info(info))
                found = loadfailure.decode(failed)
                state.failure = found.reason if found else ""
                state.profile = profile.decode(served) or state.profile
                metrics.QUEUE_DEPTH.labels(name).set(state.queue_depth)
                metrics.LIVE_WORKERS.labels(name).set(state.workers)
                # Finished entries are deleted, so the oldest left is the oldest unfinished.
                oldest_ms = min([float(o[0][0].split(b"-")[0]) for o in (oldest, oldest_streamed) if o] or [now_ms])
                state.lag_s = max(0.0, (now_ms - oldest_ms) / 1000.0)
                metrics.QUEUE_LAG.labels(name).set(state.lag_s)
        for listener in self._listeners:
            await listener()

    async def settle(self) -> None:
        """Refresh now where a model's workers have not yet published their info to this snapshot
        (one just started): what ListModels says then matches what calls to it get."""
        if any(not state.dimensions for state in self.states.values()):
            try:
                await self.refresh()
            except Exception as exc:  # a listener's failure: the snapshot stands, as in the loop
                self._mishaps.failed(exc)

    async def recheck(self, model: str) -> bool:
        """Ask Redis now whether ``model`` has a live worker; the snapshot may be stale."""
        pipe = self._redis.pipeline(transaction=False)  # type: ignore[attr-defined]
        heartbeat.count_live(pipe, model, self.liveness_s)
        heartbeat.read_info(pipe, model)
        try:
            live, info = await pipe.execute()
        except REDIS_ERRORS:
            return False
        state = self.states[model]
        state.workers = int(live)
        state.learn(heartbeat.decode_info(info))  # what the worker that just started published
        return self.redis_ok and int(live) > 0

    def retry_hint_ms(self, model: str) -> int:
        """Roughly when a full queue frees a slot: the oldest entry's age over the depth
        (how long each queued request has been taking), between 20 ms and 2 s."""
        state = self.states[model]
        return int(min(2000.0, max(20.0, 1000.0 * state.lag_s / max(1, state.queue_depth))))

    def serving(self, model: str) -> bool:
        """True when Redis answers and the model has a live worker."""
        return self.redis_ok and self.states[model].workers > 0

    def failure(self, model: str) -> str:
        """Why ``model`` cannot serve: its load failure, while no live worker serves it ("" = none)."""
        return "" if self.serving(model) else self.states[model].failure

    def refuse_failed(self, model: str) -> None:
        """FAILED_PRECONDITION naming ``model`` and its load failure, where its worker refused to load it."""
        failure = self.failure(model)
        if failure:
            raise FailedPrecondition(f"model {model!r} failed to load and serves nothing until fixed: {failure}")

    def matryoshka(self, model: str) -> tuple[int, ...]:
        """The Matryoshka sizes ``dimensions`` may name: the registry's, else those its workers' folder declares."""
        found = self.states[model].profile
        return self.registry.models[model].matryoshka_dimensions or (found.matryoshka_dimensions if found else ())

    def prompts(self, model: str) -> dict[str, str]:
        """The prompts ``model``'s workers serve (its folder's and family's with the registry's on top)."""
        found = self.states[model].profile
        return {**(found.prompts if found else {}), **self.registry.models[model].prompts}

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_S)
            try:
                await self.refresh()
            except Exception as exc:  # a listener's failure, say: the next refresh runs all the same
                self._mishaps.failed(exc)
