"""The ``embedstream.v1.Embedder`` service: Embed, EmbedStream, Rerank, RerankStream, ListModels."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import grpc
import numpy as np
from embedstream.gateway import spans
from embedstream.gateway.directory import Directory
from embedstream.gateway.dispatch import Dispatcher, Request
from embedstream.gateway.shape import chunked
from embedstream.gateway.status import streaming, unary
from embedstream.gateway.validation import OUTPUT_TYPES, VECTOR_KINDS, validate, validate_rerank, verify_images
from embedstream.gateway.window import Window

from embedstream import metrics, tracing, wire
from embedstream.errors import DeadlineExceeded, EmbedstreamError
from embedstream.profile import Profile
from embedstream.registry import Registry
from embedstream.settings import Settings
from embedstream.v1 import embedder_pb2 as pb
from embedstream.v1 import embedder_pb2_grpc as pb_grpc

FAMILIES = {
    "text-dense": pb.MODEL_FAMILY_TEXT_DENSE,
    "image-text": pb.MODEL_FAMILY_IMAGE_TEXT,
    "sparse": pb.MODEL_FAMILY_SPARSE,
    "multi-vector": pb.MODEL_FAMILY_MULTI_VECTOR,
    "rerank": pb.MODEL_FAMILY_RERANK,
    "debug": pb.MODEL_FAMILY_DEBUG,
}
OUTPUT_TYPE_VALUES = {name: value for value, name in OUTPUT_TYPES.items()}
VECTOR_KIND_VALUES = {name: value for value, name in VECTOR_KINDS.items()}

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
            await verify_images(valid.inputs, self.settings)
        return valid

    async def check_rerank(self, request: pb.RerankRequest) -> Request:
        """``request`` validated, ready to dispatch."""
        return validate_rerank(request, self.registry, self.settings, self.directory)

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
        return pb.ListModelsResponse(models=model_infos(self.registry, self.settings, self.directory))


def model_infos(registry: Registry, settings: Settings, directory: Directory) -> list[pb.ModelInfo]:
    """What ListModels (and HTTP's /v1/models) says about every served model."""
    out = []
    for name, spec in registry.models.items():
        state = directory.states[name]
        served = state.profile
        out.append(
            pb.ModelInfo(
                name=name,
                family=FAMILIES.get(spec.family, pb.MODEL_FAMILY_UNSPECIFIED),
                dimensions=state.dimensions or spec.dimensions,
                max_input_tokens=state.max_input_tokens or spec.max_input_tokens,
                serving=directory.serving(name),
                workers=state.workers,
                queue_depth=state.queue_depth,
                aliases=list(spec.aliases),
                is_default=name == registry.default,
                max_inputs_per_request=settings.max_inputs_per_request,
                normalizes=state.normalizes,
                version=spec.version,
                device=spec.device,
                dtype=spec.dtype,
                capabilities=pb.Capabilities(
                    text=True,
                    image=spec.images,
                    matryoshka_dimensions=list(directory.matryoshka(name)),
                    prompts=sorted(directory.prompts(name)),
                    output_types=[OUTPUT_TYPE_VALUES[t] for t in spec.output_types],
                    query_prompt=spec.query_prompt or (served.query_prompt if served else ""),
                    document_prompt=spec.document_prompt or (served.document_prompt if served else ""),
                    outputs=[VECTOR_KIND_VALUES[o] for o in spec.offered_outputs],
                ),
                state=_state(directory, name),
                failure=directory.failure(name),
                profile=_profile(served),
            )
        )
    return out


def _state(directory: Directory, name: str) -> pb.ModelState.ValueType:
    if directory.serving(name):
        return pb.MODEL_STATE_SERVING
    return pb.MODEL_STATE_FAILED if directory.failure(name) else pb.MODEL_STATE_WAITING


def _profile(found: Profile | None) -> pb.ModelProfile | None:
    if found is None:
        return None
    return pb.ModelProfile(
        loader=found.loader,
        architecture=found.architecture,
        pooling=found.pooling,
        include_prompt=found.include_prompt,
        normalizes=found.normalizes,
        prompts=found.prompts,
        query_prompt=found.query_prompt,
        document_prompt=found.document_prompt,
        default_prompt=found.default_prompt,
        matryoshka_dimensions=list(found.matryoshka_dimensions),
        matryoshka_layer_norm=found.matryoshka_layer_norm,
        heads=list(found.heads),
        max_input_tokens=found.max_input_tokens,
        padding_side=found.padding_side,
    )


def _metadata(reply: wire.Reply, received: float) -> pb.ResponseMetadata:
    return pb.ResponseMetadata(
        tokens=reply.tokens,
        queue_ms=reply.queue_ms,
        inference_ms=reply.inference_ms,
        total_ms=(time.perf_counter() - received) * 1000.0,
        worker=reply.worker,
        truncated_inputs=reply.truncated,
        chunks=reply.chunks,
    )


def _checked_reply(valid: Request, reply: wire.Reply) -> None:
    if not reply.ok:
        raise EmbedstreamError.from_code(reply.error_code, reply.error_message)
    if reply.spans is not None:
        if {reply.spans[k] for k in range(0, len(reply.spans), 5)} != set(range(len(valid.inputs))):
            raise EmbedstreamError.from_code("INTERNAL", "worker returned chunks that do not cover every input")
    elif reply.count != len(valid.inputs):
        raise EmbedstreamError.from_code(
            "INTERNAL", f"worker returned {reply.count} vectors for {len(valid.inputs)} inputs"
        )


def respond(request: pb.EmbedRequest, valid: Request, reply: wire.Reply, received: float) -> pb.EmbedResponse:
    """Shape a worker's reply as the response to ``request``."""
    _checked_reply(valid, reply)
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
    out.metadata.CopyFrom(_metadata(reply, received))
    return out


def respond_rerank(request: pb.RerankRequest, valid: Request, reply: wire.Reply, received: float) -> pb.RerankResponse:
    """The documents best first (top_n of them), with their scores."""
    _checked_reply(valid, reply)
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
    metrics.LATENCY.labels(valid.spec.name).observe(time.perf_counter() - received)
    return pb.RerankResponse(
        request_id=request.request_id or uuid.uuid4().hex,
        model=valid.spec.name,
        results=results,
        metadata=_metadata(reply, received),
    )


__all__ = ["DeadlineExceeded", "Embedder", "respond", "respond_rerank"]
