"""The ``embedstream.v1.Embedder`` service: Embed, EmbedStream, Rerank, RerankStream, Classify,
ClassifyStream, Tokenize, Decode, ListModels."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import grpc
import numpy as np

from embedstream import metrics, tracing, wire
from embedstream.errors import DeadlineExceeded, EmbedstreamError
from embedstream.gateway import mediacheck, spans
from embedstream.gateway.catalog import OUTPUT_TYPE_VALUES, model_infos
from embedstream.gateway.classify import respond_classify, validate_classify
from embedstream.gateway.directory import Directory
from embedstream.gateway.dispatch import Dispatcher, Request
from embedstream.gateway.shape import answered, checked, chunked, metadata
from embedstream.gateway.status import streaming, unary
from embedstream.gateway.tokenizer import respond_decode, respond_tokenize, validate_decode, validate_tokenize
from embedstream.gateway.validation import validate, validate_rerank, verify_images
from embedstream.gateway.window import Window
from embedstream.registry import Registry
from embedstream.settings import Settings
from embedstream.v1 import embedder_pb2 as pb
from embedstream.v1 import embedder_pb2_grpc as pb_grpc

SERVICE = pb.DESCRIPTOR.services_by_name["Embedder"].full_name

Req = TypeVar("Req")
Resp = TypeVar("Resp")


class Embedder(pb_grpc.EmbedderServicer):
    """Validates, dispatches and shapes responses; the queue does the rest."""

    def __init__(self, settings: Settings, registry: Registry, directory: Directory, dispatcher: Dispatcher) -> None:
        self.settings = settings
        self.registry = registry
        self.directory = directory
        self.dispatcher = dispatcher

    def deadline(self, remaining: float | None) -> float:
        """The absolute deadline of a call with ``remaining`` seconds (None: none asked), capped."""
        limit = self.settings.max_deadline_s
        return time.time() + (limit if remaining is None else min(remaining, limit))

    async def check(self, request: pb.EmbedRequest) -> Request:
        """``request`` validated (images decoded once, off the loop), ready to dispatch."""
        valid = validate(request, self.registry, self.settings, self.directory)
        if valid.spec.images:
            await verify_images(valid.inputs, self.settings, kinds=valid.kinds)
        await mediacheck.verify(valid.inputs, valid.kinds, valid.options.media, self.settings)
        return valid

    async def check_rerank(self, request: pb.RerankRequest) -> Request:
        """``request`` validated, ready to dispatch."""
        return validate_rerank(request, self.registry, self.settings, self.directory)

    async def check_classify(self, request: pb.ClassifyRequest) -> Request:
        """``request`` validated, ready to dispatch."""
        return validate_classify(request, self.registry, self.settings, self.directory)

    async def tokenize(self, request: pb.TokenizeRequest, remaining: float | None) -> pb.TokenizeResponse:
        """Tokenize, by way of a worker of the model (gRPC and HTTP)."""
        received = time.perf_counter()
        valid = validate_tokenize(request, self.registry, self.settings, self.directory)
        reply = await self.dispatcher.embed(valid, self.deadline(remaining))
        return respond_tokenize(request, valid, reply, received, self.directory)

    async def decode(self, request: pb.DecodeRequest, remaining: float | None) -> pb.DecodeResponse:
        """Decode, by way of a worker of the model (gRPC and HTTP)."""
        received = time.perf_counter()
        valid = validate_decode(request, self.registry, self.settings, self.directory)
        reply = await self.dispatcher.embed(valid, self.deadline(remaining))
        return respond_decode(request, valid, reply, received)

    @unary("Embed")
    async def Embed(self, request: pb.EmbedRequest, context: grpc.aio.ServicerContext) -> pb.EmbedResponse:
        received = time.perf_counter()
        valid = await self.check(request)
        reply = await self.dispatcher.embed(valid, self.deadline(context.time_remaining()))
        return respond(request, valid, reply, received)

    @streaming("EmbedStream")
    async def EmbedStream(
        self, request_iterator: AsyncIterator[pb.EmbedRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.EmbedResponse]:
        async for response in self._stream("EmbedStream", request_iterator, context, self.check, respond):
            yield response

    @unary("Rerank")
    async def Rerank(self, request: pb.RerankRequest, context: grpc.aio.ServicerContext) -> pb.RerankResponse:
        received = time.perf_counter()
        valid = await self.check_rerank(request)
        reply = await self.dispatcher.embed(valid, self.deadline(context.time_remaining()))
        return respond_rerank(request, valid, reply, received)

    @streaming("RerankStream")
    async def RerankStream(
        self, request_iterator: AsyncIterator[pb.RerankRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.RerankResponse]:
        async for response in self._stream(
            "RerankStream", request_iterator, context, self.check_rerank, respond_rerank
        ):
            yield response

    @unary("Classify")
    async def Classify(self, request: pb.ClassifyRequest, context: grpc.aio.ServicerContext) -> pb.ClassifyResponse:
        received = time.perf_counter()
        valid = await self.check_classify(request)
        reply = await self.dispatcher.embed(valid, self.deadline(context.time_remaining()))
        return respond_classify(request, valid, reply, received)

    @streaming("ClassifyStream")
    async def ClassifyStream(
        self, request_iterator: AsyncIterator[pb.ClassifyRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ClassifyResponse]:
        stream = self._stream("ClassifyStream", request_iterator, context, self.check_classify, respond_classify)
        async for response in stream:
            yield response

    @unary("Tokenize")
    async def Tokenize(self, request: pb.TokenizeRequest, context: grpc.aio.ServicerContext) -> pb.TokenizeResponse:
        return await self.tokenize(request, context.time_remaining())

    @unary("Decode")
    async def Decode(self, request: pb.DecodeRequest, context: grpc.aio.ServicerContext) -> pb.DecodeResponse:
        return await self.decode(request, context.time_remaining())

    async def _stream(
        self,
        rpc: str,
        request_iterator: AsyncIterator[Req],
        context: grpc.aio.ServicerContext,
        check: Callable[[Req], Awaitable[Request]],
        shape: Callable[[Req, Request, wire.Reply, float], Resp],
    ) -> AsyncIterator[Resp]:
        """The one bidi driver: read ahead within a credit window, answer in order, drop work when the client leaves."""
        window = Window(self.settings.stream_window)
        # Holds at most `stream_window` inputs' worth of entries: the pump
        # blocks on the window before adding, so this queue is bounded too.
        pending: asyncio.Queue[tuple[Req, Request, asyncio.Task[wire.Reply], float] | BaseException | None]
        pending = asyncio.Queue()
        stream_deadline = context.time_remaining()
        stream_end = None if stream_deadline is None else time.time() + stream_deadline
        traced = tracing.enabled()
        message_span = f"{SERVICE}/{rpc} message"

        async def pump() -> None:
            try:
                async for request in request_iterator:
                    received = time.perf_counter()
                    valid = await check(request)
                    await window.acquire(len(valid.inputs))
                    deadline = time.time() + self.settings.max_deadline_s
                    if stream_end is not None:
                        deadline = min(deadline, stream_end)
                    call = self.dispatcher.embed(valid, deadline, wait_for_room=True)
                    task = asyncio.ensure_future(spans.message(message_span, call) if traced else call)
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
                    window.release(len(valid.inputs))
                yield shape(request, valid, reply, received)
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
        await self.directory.settle()
        return pb.ListModelsResponse(models=model_infos(self.registry, self.settings, self.directory))


def respond(request: pb.EmbedRequest, valid: Request, reply: wire.Reply, received: float) -> pb.EmbedResponse:
    """Shape a worker's reply as the response to ``request``."""
    checked(valid, reply)
    out = pb.EmbedResponse(
        request_id=request.request_id or uuid.uuid4().hex,
        model=valid.spec.name,
        embeddings=chunked(reply, request.encoding),
        dimensions=reply.dimensions,
        output_type=OUTPUT_TYPE_VALUES[reply.output_type],
        multi_vector_dimensions=reply.multi_dimensions,
        sparse_dimensions=reply.sparse_dimensions,
    )
    metrics.LATENCY.labels(valid.spec.name).observe(time.perf_counter() - received)
    out.metadata.CopyFrom(metadata(reply, received))
    return out


def respond_rerank(request: pb.RerankRequest, valid: Request, reply: wire.Reply, received: float) -> pb.RerankResponse:
    """The documents best first (top_n of them), with their scores."""
    checked(valid, reply)
    scores = np.frombuffer(reply.vectors, dtype="<f4")
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    if request.top_n:
        order = order[: request.top_n]
    results = [
        pb.RerankResult(
            index=i, score=float(scores[i]), document=request.documents[i] if request.return_documents else ""
        )
        for i in order
    ]
    return pb.RerankResponse(results=results, **answered(request.request_id, valid, reply, received))


__all__ = ["DeadlineExceeded", "Embedder", "respond", "respond_rerank"]
