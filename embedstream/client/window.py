"""The window of an EmbedStream: requests sent and not yet answered, kept across reconnects.

Both clients share this bookkeeping; its two feeders differ only in their waiting: a
threading condition for the blocking client (gRPC pulls requests on its own thread), an
asyncio condition for the other.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import AsyncIterator, Iterable, Iterator

from embedstream.client.codec import MAX_INPUTS, EmbedOptions, chunks
from embedstream.client.embeddings import Embeddings, vectors
from embedstream.v1 import embedder_pb2 as pb


class Window:
    """Unanswered requests of one ``embed_stream`` in send order, at most ``size`` texts of them.

    A broken stream's sender may still be pulling when the next attempt starts: each attempt
    has a number, and a superseded attempt takes nothing more from the source, so no chunk
    is taken by a dead attempt and lost.
    """

    def __init__(self, texts: Iterable[str], batch_size: int, size: int, options: EmbedOptions) -> None:
        self.size = size
        self.attempt = 0
        self._source = enumerate(chunks(texts, min(batch_size, MAX_INPUTS)))
        self._options = options
        self._items: collections.deque[tuple[int, pb.EmbedRequest]] = collections.deque()
        self._texts = 0

    @property
    def drained(self) -> bool:
        """Whether every request sent so far has been answered."""
        return not self._items

    def restart(self) -> tuple[int, list[pb.EmbedRequest]]:
        """Begin a new attempt; returns its number and the requests to send again."""
        self.attempt += 1
        return self.attempt, [req for _, req in self._items]

    def ready(self, attempt: int) -> bool:
        """Whether ``attempt`` need wait no longer: it was superseded, or the window has room."""
        return self.attempt != attempt or self._texts < self.size

    def take(self, attempt: int) -> pb.EmbedRequest | None:
        """The next new request for ``attempt``; None once it is superseded or the source is done."""
        item = next(self._source, None) if self.attempt == attempt else None
        if item is None:
            return None
        k, chunk = item
        req = self._options.request(chunk, rid=str(k))
        self._items.append((k, req))
        self._texts += len(chunk)
        return req

    def answer(self, resp: pb.EmbedResponse) -> Embeddings:
        """The embeddings of ``resp``, which must answer the oldest unanswered request."""
        if not self._items:
            raise RuntimeError(f"stream answered {resp.request_id!r} with nothing due")
        k, req = self._items.popleft()
        self._texts -= len(req.inputs)
        if resp.request_id != str(k):
            raise RuntimeError(f"stream answered {resp.request_id!r} where {k} was due")
        return vectors(resp)


def feed(unanswered: Window, cond: threading.Condition) -> Iterator[pb.EmbedRequest]:
    """The blocking client's requests of one stream attempt (pulled on gRPC's thread): the
    unanswered ones again, then new ones once the window has room."""
    with cond:
        attempt, resend = unanswered.restart()
        cond.notify_all()
    yield from resend
    while True:
        with cond:
            cond.wait_for(lambda: unanswered.ready(attempt))
            req = unanswered.take(attempt)
        if req is None:
            return
        yield req


async def afeed(unanswered: Window, cond: asyncio.Condition) -> AsyncIterator[pb.EmbedRequest]:
    """The asyncio client's requests of one stream attempt: the unanswered ones again, then
    new ones once the window has room."""
    async with cond:
        attempt, resend = unanswered.restart()
        cond.notify_all()
    for again in resend:
        yield again
    while True:
        async with cond:
            await cond.wait_for(lambda: unanswered.ready(attempt))
            req = unanswered.take(attempt)
        if req is None:
            return
        yield req
