"""The loads the fault scenarios run: a corpus, a client stream that records what it got back, a
strike (kill or stop) timed while a worker holds entries, and a one-text Embed."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator

import grpc

from embedstream.v1 import embedder_pb2 as pb
from tests.support.faults import Cluster, Ledger, consumer_pending
from tests.support.processes import Proc, stub, wait_until


def corpus(n: int, tag: str) -> list[str]:
    return [f"{tag} text {i} " + "word " * (i % 7) for i in range(n)]


class StreamLoad:
    """One EmbedStream that keeps sending 2-text requests until :meth:`finish`, then a
    fixed tail; at most ``window`` requests unanswered. Records into a ledger."""

    def __init__(self, port: int, ledger: Ledger, tag: str, window: int = 32, tail: int = 40) -> None:
        self.port = port
        self.ledger = ledger
        self.tag = tag
        self.window = window
        self.tail = tail
        self.answered = 0
        self.workers: list[str] = []
        self.error: grpc.RpcError | None = None
        self._finish = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _requests(self) -> Iterator[pb.EmbedRequest]:
        k = after = 0
        while after < self.tail:
            if self._finish.is_set():
                after += 1
            elif k - self.answered >= self.window:
                time.sleep(0.005)
                continue
            rid = f"{self.tag}-{k}"
            yield self.ledger.send(rid, [f"{rid} a", f"{rid} b " + "x " * (k % 9)])
            k += 1

    def _run(self) -> None:
        try:
            with stub(self.port) as s:
                for resp in s.EmbedStream(self._requests(), timeout=120):
                    self.ledger.answer(resp.request_id, resp)
                    self.workers.append(resp.metadata.worker)
                    self.answered += 1
        except grpc.RpcError as exc:
            self.error = exc

    def answered_by(self, pid: int) -> int:
        return sum(f"-{pid}-" in w for w in self.workers)

    def finish(self, timeout: float = 60) -> None:
        self._finish.set()
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the stream did not finish"
        assert self.error is None, self.error


def strike_while_holding(cluster: Cluster, load: StreamLoad, worker: Proc, sig: signal.Signals) -> tuple[int, float]:
    """Once ``worker`` has answered some of ``load`` and holds more, send it ``sig``; return
    how many entries it held and the seconds until another worker had reclaimed them all."""
    wait_until(
        lambda: load.answered_by(worker.pid) >= 10 and consumer_pending(cluster.r, worker.pid) > 0,
        30,
        what="the worker to hold work",
    )
    held = consumer_pending(cluster.r, worker.pid)
    worker.signal(sig)
    struck = time.monotonic()
    wait_until(lambda: consumer_pending(cluster.r, worker.pid) == 0, 30, what="its entries to be reclaimed")
    return held, time.monotonic() - struck


def embed_one(port: int, text: str, timeout: float = 5, model: str = "fault") -> pb.EmbedResponse:
    with stub(port) as s:
        return s.Embed(pb.EmbedRequest(model=model, inputs=[pb.Input(text=text)]), timeout=timeout)


def serving(port: int) -> bool:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
    return status == health_pb2.HealthCheckResponse.SERVING
