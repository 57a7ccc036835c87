"""The gateway's HTTP API beside gRPC: OpenAI's /v1/embeddings and /v1/models, /v1/rerank, and
TEI's /tokenize, /decode and /classify (/predict).

aiohttp's server runs in the gateway's own event loop (``AppRunner`` + ``TCPSite``, which leave
signals to the gateway), so an HTTP call takes the same path as a gRPC one: the guard's key
check and tenant rate limit, the same validation functions, the same dispatcher (queue
admission, deadline, withdrawal when the client leaves), the same response shaping, metrics and
spans. Errors are the one hierarchy of ``embedstream.errors``, given their HTTP status next to
their gRPC code in ``gateway.status``, in OpenAI's error body.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from embedstream import metrics, tracing
from embedstream.errors import EmbedstreamError, InvalidArgument, ResourceExhausted, TooLarge, Unavailable
from embedstream.gateway import compat, tei
from embedstream.gateway.auth import TENANT, current_tenant
from embedstream.gateway.catalog import model_infos
from embedstream.gateway.classify import respond_classify
from embedstream.gateway.directory import Directory
from embedstream.gateway.dispatch import Dispatcher
from embedstream.gateway.embedder import Embedder, respond, respond_rerank
from embedstream.gateway.guard import Guard, refused
from embedstream.gateway.status import http_headers, http_status, to_error
from embedstream.registry import Registry
from embedstream.settings import Settings
from embedstream.tls import server_ssl_context

log = logging.getLogger(__name__)

#: The header that carries a call's deadline, in seconds (HTTP has no standard one).
TIMEOUT_HEADER = "X-Request-Timeout"
#: Inputs of an /v1/embeddings call answered from the embedding cache (docs/cache.md).
CACHED_HEADER = "X-Embedstream-Cached-Inputs"
#: Paths served without a key, as gRPC's health service is.
OPEN_PATHS = frozenset({"/health"})
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def body_limit(settings: Settings) -> int:
    """The largest body accepted: the most inputs of the largest text, each byte JSON-escaped
    at worst (``\\u00XX``, 6 bytes), plus room for the other fields."""
    return settings.max_inputs_per_request * settings.max_text_bytes * 6 + 64 * 1024


class HttpApi:
    """The HTTP server; ``start()`` binds ``settings.host:settings.http_port``, ``stop()`` drains."""

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        directory: Directory,
        dispatcher: Dispatcher,
        embedder: Embedder,
        guard: Guard,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.directory = directory
        self.dispatcher = dispatcher
        self.embedder = embedder
        self.guard = guard
        self.limit = body_limit(settings)
        self.ssl = server_ssl_context(settings.tls_cert, settings.tls_key, settings.tls_client_ca)
        self.app = web.Application(client_max_size=self.limit, middlewares=[self._edge])
        self.app.router.add_post("/v1/embeddings", self.embeddings)
        self.app.router.add_get("/v1/models", self.models)
        self.app.router.add_get("/v1/models/{model}", self.model)
        self.app.router.add_post("/v1/rerank", self.rerank)
        self.app.router.add_post("/rerank", self.rerank)
        self.app.router.add_post("/tokenize", self.tokenize)
        self.app.router.add_post("/decode", self.decode)
        self.app.router.add_post("/classify", self.classify)
        self.app.router.add_post("/predict", self.classify)
        self.app.router.add_get("/health", self.health)
        # handler_cancellation: a client that hangs up cancels its handler, which withdraws
        # its queue entry, as a cancelled gRPC call does.
        self.runner = web.AppRunner(
            self.app,
            handle_signals=False,
            access_log=None,
            handler_cancellation=True,
            shutdown_timeout=settings.shutdown_grace_s,
        )
        self.port = 0
        self.draining = False
        self._inflight = 0

    async def start(self) -> None:
        """Bind and serve."""
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.settings.host, self.settings.http_port, ssl_context=self.ssl)
        await site.start()
        self.port = int(self.runner.addresses[0][1])

    async def stop(self) -> None:
        """Refuse new connections, let calls in flight finish (shutdown grace), close."""
        self.draining = True
        await self.runner.cleanup()

    @web.middleware
    async def _edge(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Span, key, concurrency cap, error mapping and metrics around every call."""
        route = request.match_info.route.resource
        path = route.canonical if route is not None else request.path
        attributes = {"http.request.method": request.method, "http.route": path, "url.path": request.path}
        headers = [(k.lower(), v) for k, v in request.headers.items()]
        with tracing.server_span(f"{request.method} {path}", headers, attributes):
            response = await self._answer(request, handler, path, headers)
            tracing.annotate({"http.response.status_code": response.status, "embedstream.tenant": current_tenant()})
            if response.status >= 500:
                tracing.fail(f"HTTP {response.status}")
            return response

    async def _answer(
        self, request: web.Request, handler: Handler, path: str, headers: list[tuple[str, str]]
    ) -> web.StreamResponse:
        rpc = f"HTTP {path}"
        self._inflight += 1
        try:
            if path not in OPEN_PATHS:
                try:
                    tenant, limit = self.guard.identify(headers)
                except EmbedstreamError as exc:
                    refused(rpc, request.remote or "-", exc)
                    raise
                TENANT.set(tenant)
                request["limit"] = limit
                if self._inflight > self.settings.max_concurrent_rpcs:
                    raise ResourceExhausted(
                        f"the gateway serves {self.settings.max_concurrent_rpcs} HTTP calls at once, its limit; retry",
                        retry_after_ms=100,
                    )
            response = await handler(request)
        except asyncio.CancelledError:
            metrics.REQUESTS.labels(rpc, request.get("model", "-"), "CANCELLED").inc()
            raise
        except web.HTTPRequestEntityTooLarge:
            response = self._error(request, rpc, TooLarge(f"body: larger than the {self.limit} bytes accepted"))
        except web.HTTPException as exc:  # no such path, or method: OpenAI's body, the router's status
            body = {"error": {"message": exc.reason, "type": "invalid_request_error", "param": None, "code": None}}
            allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
            response = web.json_response(body, status=exc.status, headers=allow)
        except Exception as exc:
            response = self._error(request, rpc, to_error(exc))
        else:
            metrics.REQUESTS.labels(rpc, request.get("model", "-"), "OK").inc()
        finally:
            self._inflight -= 1
        return response

    def _error(self, request: web.Request, rpc: str, exc: EmbedstreamError) -> web.Response:
        status = http_status(exc)
        metrics.REQUESTS.labels(rpc, request.get("model", "-"), exc.code.value).inc()
        log.debug("%s ended %d %s: %s", rpc, status, exc.code.value, exc.message)
        body = compat.error_body(exc, status, request.get("inputs", "input"))
        return web.json_response(body, status=status, headers=http_headers(exc))

    async def _body(self, request: web.Request) -> dict[str, Any]:
        """The JSON object in the body; the request's ``model`` is noted for metrics."""
        if request.content_length is not None and request.content_length > self.limit:
            raise TooLarge(f"body: {request.content_length} bytes exceed the {self.limit} bytes accepted")
        raw = await request.read()
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidArgument(f"body: not valid JSON ({exc})") from None
        if not isinstance(body, dict):
            raise InvalidArgument("body: must be a JSON object")
        if isinstance(body.get("model"), str) and body["model"]:
            request["model"] = body["model"]
        return body

    async def _admit(self, request: web.Request, cost: int) -> float:
        """Charge ``cost`` inputs to the tenant (429 when over) and return the call's deadline."""
        await self.guard.limiter.admit(current_tenant(), request["limit"], cost)
        remaining = None
        if (raw := request.headers.get(TIMEOUT_HEADER)) is not None:
            try:
                remaining = float(raw)
            except ValueError:
                remaining = math.nan
            if not remaining > 0 or math.isinf(remaining):
                raise InvalidArgument(f"{TIMEOUT_HEADER}: {raw!r} is not a positive number of seconds")
        return self.embedder.deadline(remaining)

    async def embeddings(self, request: web.Request) -> web.Response:
        """POST /v1/embeddings, OpenAI's shape."""
        received = time.perf_counter()
        message, encoding_format = compat.embed_request(await self._body(request))
        deadline = await self._admit(request, len(message.inputs))
        valid = await self.embedder.check(message)
        if not valid.spec.dense and not message.outputs:
            raise InvalidArgument(
                f"model: {valid.spec.name!r} is a {valid.spec.family} model; /v1/embeddings returns one dense "
                f"vector per input unless outputs names another ({valid.spec.offered_outputs[0]!r} here)"
            )
        reply = await self.dispatcher.embed(valid, deadline)
        response = _json(
            compat.embeddings_body(respond(message, valid, reply, received), encoding_format, list(message.outputs))
        )
        response.headers[CACHED_HEADER] = str(reply.cached)  # OpenAI's body has no place for it
        return response

    async def rerank(self, request: web.Request) -> web.Response:
        """POST /v1/rerank and /rerank: Cohere's, Jina's and TEI's shared shape."""
        received = time.perf_counter()
        message = compat.rerank_request(await self._body(request))
        deadline = await self._admit(request, len(message.documents))
        valid = await self.embedder.check_rerank(message)
        reply = await self.dispatcher.embed(valid, deadline)
        return _json(compat.rerank_body(respond_rerank(message, valid, reply, received), message.return_documents))

    async def tokenize(self, request: web.Request) -> web.Response:
        """POST /tokenize: TEI's shape, answered by a worker of the model."""
        request["inputs"] = "inputs"
        message, details = tei.tokenize_request(await self._body(request))
        remaining = await self._admit(request, len(message.inputs)) - time.time()
        return _json(tei.tokenize_body(await self.embedder.tokenize(message, remaining), details))

    async def decode(self, request: web.Request) -> web.Response:
        """POST /decode: TEI's shape, answered by a worker of the model."""
        request["inputs"] = "ids"
        message = tei.decode_request(await self._body(request))
        remaining = await self._admit(request, len(message.inputs)) - time.time()
        decoded = await self.embedder.decode(message, remaining)
        return _json(list(decoded.texts))

    async def classify(self, request: web.Request) -> web.Response:
        """POST /classify and /predict: TEI's predict shape, with the pipeline's top_k and function_to_apply."""
        received = time.perf_counter()
        request["inputs"] = "inputs"
        message, single = tei.classify_request(await self._body(request))
        deadline = await self._admit(request, len(message.inputs))
        valid = await self.embedder.check_classify(message)
        reply = await self.dispatcher.embed(valid, deadline)
        return _json(tei.classify_body(respond_classify(message, valid, reply, received), single))

    async def models(self, request: web.Request) -> web.Response:
        """GET /v1/models: every served model, OpenAI's list shape plus what ListModels says."""
        await self._admit(request, 1)
        await self.directory.settle()
        infos = model_infos(self.registry, self.settings, self.directory)
        return _json({"object": "list", "data": [compat.model_body(info) for info in infos]})

    async def model(self, request: web.Request) -> web.Response:
        """GET /v1/models/{model}: one model, by name or alias (404 when unknown)."""
        await self._admit(request, 1)
        request["model"] = request.match_info["model"]
        name = self.registry.resolve(request.match_info["model"]).name
        await self.directory.settle()
        infos = model_infos(self.registry, self.settings, self.directory)
        return _json(next(compat.model_body(info) for info in infos if info.name == name))

    async def health(self, request: web.Request) -> web.Response:
        """GET /health: 200 while serving, 503 while Redis is unreachable or the gateway drains."""
        if self.draining:
            raise Unavailable("the gateway is shutting down")
        if not self.directory.redis_ok:
            raise Unavailable("the queue (Redis) is unreachable")
        return _json({"status": "SERVING"})


def _json(body: Any) -> web.Response:
    return web.Response(body=json.dumps(body, separators=(",", ":")).encode(), content_type="application/json")
