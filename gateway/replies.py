"""The gateway's reply stream: one reader task completes every waiting call.

Each gateway process owns one stream. Workers XADD to it with NOMKSTREAM, so
a gateway that died leaves no stream behind to fill: its stream carries a TTL
that only the live reader keeps renewing. A reply for an id nobody waits for
(the call was answered already, or timed out) is dropped and counted: that is
how a redelivered entry's second answer never reaches a client.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

from embedstream import keys, metrics, wire
from embedstream.backoff import Backoff
from embedstream.connections import REDIS_ERRORS, connect, stop_tasks
from embedstream.errors import EmbedstreamError
from embedstream.loops import Mishaps

log = logging.getLogger(__name__)

BLOCK_MS = 1000
STREAM_TTL_S = 120
#: Replies read are trimmed from the stream once this many wait, or this long after the last trim.
TRIM_ENTRIES = 256
TRIM_S = 0.25
#: The longest each shutdown step may take.
STOP_WAIT_S = 2.0
# Create the stream only when missing (XADD MAXLEN 0 leaves it empty; on a live
# stream it would trim unread replies), then renew its TTL.
KEEP_ALIVE = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('XADD', KEYS[1], 'MAXLEN', '0', '*', 'init', '1')
end
return redis.call('EXPIRE', KEYS[1], ARGV[1])
"""


class ReplyRouter:
    """Maps job ids to futures and fulfils them from the reply stream."""

    def __init__(self, redis_url: str, timeout_s: float) -> None:
        self.gateway_id = uuid.uuid4().hex[:12]
        self.stream = keys.replies(self.gateway_id)
        self._redis = connect(redis_url, timeout_s, block_s=BLOCK_MS / 1000)
        self._keep_alive = self._redis.register_script(KEEP_ALIVE)
        self._waiting: dict[str, asyncio.Future[wire.Reply]] = {}
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.late_replies = 0

    async def start(self) -> None:
        """Start the reader; it creates the stream and keeps it alive."""
        self._task = asyncio.create_task(self._run(), name="replies")

    async def stop(self) -> None:
        """Stop reading and delete the stream (it has a TTL: a step that hangs is skipped)."""
        if self._task:
            self._closing = True  # the reader ends by itself within one blocking read
            await stop_tasks([self._task], grace_s=BLOCK_MS / 1000 + STOP_WAIT_S, cancel_wait_s=STOP_WAIT_S)
        try:
            await asyncio.wait_for(self._redis.delete(self.stream), STOP_WAIT_S)
        except REDIS_ERRORS:
            log.warning("reply stream %s left to its TTL", self.stream)
        try:
            await asyncio.wait_for(self._redis.aclose(), STOP_WAIT_S)
        except TimeoutError:
            pass

    def expect(self, job_id: str) -> asyncio.Future[wire.Reply]:
        """A future the reply for ``job_id`` will complete."""
        future: asyncio.Future[wire.Reply] = asyncio.get_running_loop().create_future()
        self._waiting[job_id] = future
        return future

    def forget(self, job_id: str) -> None:
        """Stop waiting for ``job_id``; a reply that comes later is dropped."""
        self._waiting.pop(job_id, None)

    def fail_all(self, error: EmbedstreamError, job_ids: list[str] | None = None) -> None:
        """Answer waiting calls with ``error`` (all, or those in ``job_ids``)."""
        for job_id in list(self._waiting) if job_ids is None else job_ids:
            future = self._waiting.pop(job_id, None)
            if future is not None and not future.done():
                future.set_exception(error)

    async def _ensure_stream(self) -> None:
        await self._keep_alive(keys=[self.stream], args=[STREAM_TTL_S])

    async def _run(self) -> None:
        last = "0-0"
        backoff = Backoff()
        renewed = 0.0
        unread, trimmed = 0, 0.0
        loop = asyncio.get_running_loop()
        mishaps = Mishaps("reply reader")
        while not self._closing:
            try:
                if loop.time() - renewed > STREAM_TTL_S / 4:
                    await self._ensure_stream()
                    renewed = loop.time()
                got = await self._redis.xread({self.stream: last}, count=2048, block=BLOCK_MS)
                backoff.reset()
                mishaps.recovered()
            except Exception as exc:  # whatever it was (Redis full, a command denied), read again
                mishaps.failed(exc)
                renewed = 0.0
                await backoff.wait()
                continue
            if not got:
                continue
            entries: list[tuple[bytes, dict[bytes, bytes]]] = got[0][1]
            for _entry_id, fields in entries:
                self._deliver(fields.get(keys.PAYLOAD.encode()))
            last_id = entries[-1][0].decode()
            last = last_id
            unread += len(entries)
            if unread < TRIM_ENTRIES and loop.time() - trimmed < TRIM_S:
                continue  # a round trip less before the next read, while replies flow
            try:
                await self._redis.xtrim(self.stream, minid=_successor(last_id))
                unread, trimmed = 0, loop.time()
            except REDIS_ERRORS:
                renewed = 0.0

    def _deliver(self, payload: bytes | None) -> None:
        if payload is None:
            return
        try:
            reply = wire.decode_reply(payload)
        except wire.WireError as exc:
            log.error("dropping an undecodable reply: %s", exc)
            return
        future = self._waiting.pop(reply.id, None)
        if future is None or future.done():
            self.late_replies += 1
            metrics.LATE_REPLIES.inc()
            return
        future.set_result(reply)


def _successor(stream_id: str) -> str:
    ms, _, seq = stream_id.partition("-")
    return f"{ms}-{int(seq) + 1}"
