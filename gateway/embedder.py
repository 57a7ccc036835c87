"""The ``embedstream.v1.Embedder`` service: Embed, EmbedStream, ListModels."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import grpc

from embedstream import metrics, wire
from embedstream.errors import DeadlineExceeded, EmbedstreamError
from embedstream.registry import Registry
from embedstream.settings import Settings
from embedstream.v1 import embedder_pb2 as pb
from embedstream.v1 import embedder_pb2_grpc as pb_grpc
from gateway.directory import Directory
from gateway.dispatch import Dispatcher, Request
from gateway.status import streaming, unary
from gateway.validation import validate
from gateway.window import Window

FAMILIES = {"text-dense": pb.MODEL_FAMILY_TEXT_DENSE, "debug": pb.MODEL_FAMILY_DEBUG}


class Embedder(pb_grpc.EmbedderServicer):
    """Validates, dispatches and shapes responses; the queue does the rest."""

    def __init__(self, settings: Settings, registry: Registry, directory: Directory, dispatcher: Dispatcher) -> None:
        self.settings = settings
        self.registry = registry
        self.directory = directory
        self.dispatcher = dispatcher

    def _deadline(self, context: grpc.aio.ServicerContext) -> float:
        remaining = context.time_remaining()
        limit = self.settings.max_deadline_s
        return time.time() + (limit if remaining is None else min(remaining, limit))

    @unary("Embed")
    async def Embed(self, request: pb.EmbedRequest, context: grpc.aio.ServicerContext) -> pb.EmbedResponse:
        received = time.perf_counter()
        valid = validate(request, self.registry, self.settings, self.directory)
        reply = await self.dispatcher.embed(valid, self._deadline(context))
        return respond(request, valid, reply, received)

    @streaming("EmbedStream")
    async def EmbedStream(
        self, request_iterator: AsyncIterator[pb.EmbedRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.EmbedResponse]:
        window = Window(self.settings.stream_window)
        # Holds at most `stream_window` inputs' worth of entries: the pump
        # blocks on the window before adding, so this queue is bounded too.
        pending: asyncio.Queue[tuple[pb.EmbedRequest, Request, asyncio.Task[wire.Reply], float] | BaseException | None]
        pending = asyncio.Queue()
        stream_deadline = context.time_remaining()
        stream_end = None if stream_deadline is None else time.time() + stream_deadline

        async def pump() -> None:
            try:
                async for request in request_iterator:
                    received = time.perf_counter()
                    valid = validate(request, self.registry, self.settings, self.directory)
                    await window.acquire(len(valid.texts))
                    deadline = time.time() + self.settings.max_deadline_s
                    if stream_end is not None:
                        deadline = min(deadline, stream_end)
                    task = asyncio.ensure_future(self.dispatcher.embed(valid, deadline, wait_for_room=True))
                    await pending.put((request, valid, task, received))
                await pending.put(None)
            except (EmbedstreamError, grpc.RpcError, Exception) as exc:
                await pending.put(exc)

        pump_task = asyncio.create_task(pump())
        try:
            while True:
                item = await pending.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                request, valid, task, received = item
                try:
                    reply = await task
                finally:
                    window.release(len(valid.texts))
                yield respond(request, valid, reply, received)
        finally:
            # The client left, or the stream failed: drop all queued work.
            pump_task.cancel()
            while not pending.empty():
                left = pending.get_nowait()
                if isinstance(left, tuple):
                    left[2].cancel()

    @unary("ListModels")
    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        out = pb.ListModelsResponse()
        for name, spec in self.registry.models.items():
            state = self.directory.states[name]
            out.models.append(
                pb.ModelInfo(
                    name=name,
                    family=FAMILIES.get(spec.family, pb.MODEL_FAMILY_UNSPECIFIED),
                    dimensions=state.dimensions or spec.dimensions,
                    max_input_tokens=state.max_input_tokens or spec.max_input_tokens,
                    serving=self.directory.serving(name),
                    workers=state.workers,
                    queue_depth=state.queue_depth,
                    aliases=list(spec.aliases),
                    is_default=name == self.registry.default,
                    max_inputs_per_request=self.settings.max_inputs_per_request,
                    normalizes=state.normalizes,
                )
            )
        return out


def respond(request: pb.EmbedRequest, valid: Request, reply: wire.Reply, received: float) -> pb.EmbedResponse:
    """Shape a worker's reply as the response to ``request``."""
    if not reply.ok:
        raise EmbedstreamError.from_code(reply.error_code, reply.error_message)
    if reply.count != len(valid.texts):
        raise EmbedstreamError.from_code(
            "INTERNAL", f"worker returned {reply.count} vectors for {len(valid.texts)} inputs"
        )
    dim = reply.dimensions
    if request.encoding == pb.VECTOR_ENCODING_PACKED_F32LE:
        raw = reply.vectors
        step = dim * 4
        embeddings = [pb.Embedding(packed=raw[i : i + step]) for i in range(0, len(raw), step)]
    else:
        import numpy as np

        rows = np.frombuffer(reply.vectors, dtype="<f4").reshape(reply.count, dim).tolist()
        embeddings = [pb.Embedding(values=row) for row in rows]
    metrics.LATENCY.labels(valid.spec.name).observe(time.perf_counter() - received)
    return pb.EmbedResponse(
        request_id=request.request_id or uuid.uuid4().hex,
        model=valid.spec.name,
        embeddings=embeddings,
        dimensions=dim,
        metadata=pb.ResponseMetadata(
            tokens=reply.tokens,
            queue_ms=reply.queue_ms,
            inference_ms=reply.inference_ms,
            total_ms=(time.perf_counter() - received) * 1000.0,
            worker=reply.worker,
            truncated_inputs=reply.truncated,
        ),
    )


__all__ = ["DeadlineExceeded", "Embedder", "respond"]
