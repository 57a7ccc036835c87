"""The window of a blocking EmbedStream: requests sent and not yet answered, across reconnects."""

from __future__ import annotations

import collections
import threading
from collections.abc import Iterator

from embedstream.client.codec import embed_request
from embedstream.v1 import embedder_pb2 as pb


class Pending:
    """Requests sent on a stream and not yet answered.

    gRPC pulls requests on its own thread while the caller consumes answers, and
    a broken stream's sender may still be pulling when the next attempt starts:
    pulling from the source, recording the request and switching attempts all
    happen under one lock, so no chunk is taken by a dead attempt and lost.
    """

    def __init__(
        self, window: int, source: Iterator[tuple[int, list[str]]], args: tuple[str, bool | None, bool | None]
    ):
        self.window = window
        self.items: collections.deque[tuple[int, pb.EmbedRequest]] = collections.deque()
        self.texts = 0
        self.attempt = 0
        self._source = source
        self._args = args
        self._cond = threading.Condition()

    def restart(self) -> tuple[int, list[pb.EmbedRequest]]:
        """Begin a new attempt; returns its number and the requests to send again."""
        with self._cond:
            self.attempt += 1
            self._cond.notify_all()
            return self.attempt, [req for _, req in self.items]

    def pull(self, attempt: int) -> pb.EmbedRequest | None:
        """The next new request for ``attempt``, once the window has room; None when done."""
        with self._cond:
            self._cond.wait_for(lambda: self.attempt != attempt or self.texts < self.window)
            if self.attempt != attempt:
                return None
            item = next(self._source, None)
            if item is None:
                return None
            k, chunk = item
            req = embed_request(chunk, *self._args, rid=str(k))
            self.items.append((k, req))
            self.texts += len(chunk)
            return req

    def pop(self) -> tuple[int, pb.EmbedRequest]:
        """Mark the oldest request answered."""
        with self._cond:
            k, req = self.items.popleft()
            self.texts -= len(req.inputs)
            self._cond.notify_all()
            return k, req


def feed(pending: Pending) -> Iterator[pb.EmbedRequest]:
    """One stream attempt's requests: the unanswered ones again, then new ones."""
    attempt, resend = pending.restart()
    yield from resend
    while (req := pending.pull(attempt)) is not None:
        yield req
